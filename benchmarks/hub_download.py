"""Hub download throughput: ours (idp_ops.models.hub) against plain huggingface_hub.hf_hub_download, side by side.

Both fetch the same LFS file of --size-mb random bytes from the same fake Hub
(idp_ops_harness/fake_hub.py) on loopback. The server runs in its own process, so it competes with
neither client for the GIL. Rounds alternate (ours, theirs, ours, ...) into fresh directories; the
served file stays in the page cache, so the figure is the client's own cost: HTTP, hashing, writing.

What each does per byte differs, and the table says so:
- ours: model info (commit + LFS sha256), stream with a running sha256, fsync, verify, rename read-only
  (the fsync makes ours wait for the disk; hf_hub_download's best runs are the ones writeback did not catch);
- hf_hub_download: HEAD, stream into its cache (blobs/ + a symlink), no hash check;
- hf_hub_download + sha256: the same plus the separate hash pass a caller would need to match ours.

Usage: .venv/bin/python benchmarks/hub_download.py [--size-mb 300] [--rounds 3] [--work DIR]
The work dir (default: a temp dir) holds the served file and each round's copy; it is deleted at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: idp_ops_harness

REPO = "bench/big-model"
FILE = "model.safetensors"


def serve(path: Path) -> None:
    """Child process: run the fake Hub with one repo holding ``path``; print base and commit, then wait."""
    from idp_ops_harness.fake_hub import running_fake_hub

    with running_fake_hub() as hub:
        commit = hub.state.add_repo(REPO, {FILE: path}, lfs={FILE})
        print(json.dumps({"base": hub.base, "commit": commit}), flush=True)
        sys.stdin.read()  # until the parent closes our stdin


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            block = os.urandom(min(16 << 20, remaining))
            handle.write(block)
            remaining -= len(block)


def ours(base: str, dest: Path) -> tuple[float, Path]:
    from idp_ops.models.downloads import download_models
    from idp_ops.settings import ModelDownload

    spec = ModelDownload(name="big", hf_repo=REPO, hf_file=FILE, target=FILE)
    started = time.perf_counter()
    [result] = download_models([spec], dest, hf_endpoint=base, progress_interval_s=3600.0)
    seconds = time.perf_counter() - started
    if result.status != "downloaded":
        raise SystemExit(f"ours failed: {result.message}")
    return seconds, dest / FILE


def theirs(base: str, commit: str, dest: Path, *, verify: bool) -> tuple[float, Path]:
    from huggingface_hub import hf_hub_download

    started = time.perf_counter()
    path = Path(hf_hub_download(REPO, FILE, revision=commit, cache_dir=dest, endpoint=base, token=False))
    if verify:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(8 << 20):
                digest.update(block)
    return time.perf_counter() - started, path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    # Plain HTTP to a fake Hub: no telemetry, no Xet (the fake sends no Xet headers), no stored token.
    os.environ.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    work = args.work or Path(tempfile.mkdtemp(prefix="idp-hub-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mb * 1_000_000
    served = work / "served.bin"
    try:
        write_random(served, size)
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(served)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            hello = json.loads(child.stdout.readline())
            base, commit = hello["base"], hello["commit"]
            times: dict[str, list[float]] = {"ours": [], "hf_hub_download": [], "hf_hub_download + sha256": []}
            for round_no in range(args.rounds + 1):  # round 0 warms both up and is not counted
                for label in times:
                    dest = work / f"{label.replace(' ', '')}-{round_no}"
                    if label == "ours":
                        seconds, path = ours(base, dest)
                    else:
                        seconds, path = theirs(base, commit, dest, verify=label.endswith("sha256"))
                    if path.stat().st_size != size:
                        raise SystemExit(f"{label}: got {path.stat().st_size} bytes, expected {size}")
                    shutil.rmtree(dest)
                    if round_no:
                        times[label].append(seconds)
        finally:
            child.stdin.close()
            child.wait(timeout=10)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    baseline = statistics.median(times["hf_hub_download"])
    print(f"{args.size_mb} MB random LFS file from a fake Hub on loopback, median of {args.rounds} rounds each")
    print(f"{'client':<26} {'median s':>9} {'MB/s':>8} {'time vs hf_hub_download':>24} {'best s':>7}  runs (s)")
    for label, runs in times.items():
        median = statistics.median(runs)
        print(
            f"{label:<26} {median:>9.2f} {size / 1e6 / median:>8.0f} {median / baseline:>23.2f}x {min(runs):>7.2f}  "
            + " ".join(f"{s:.2f}" for s in runs)
        )
    print("ours fsyncs the file before the rename (durable once placed); hf_hub_download leaves it to writeback.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
