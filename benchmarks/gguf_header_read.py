"""How long reading a GGUF's header takes, beside reading the whole file, side by side.

idp_ops.models.gguf_meta.read_gguf walks the header (metadata and tensor directory) and
never reads the tensor data; the tests prove that by counting the bytes it reads
(idp_ops_tests/models/test_gguf_meta.py). This prints what that is worth in time, on
this machine, for:

  the demo model   Gemma 3 270M Q4_K_M (253 MB, a 262,144-token vocabulary in its header):
                   read_gguf, against reading every byte of the file, against the gguf
                   package's own GGUFReader (it materialises the vocabulary: ~11 s)
  a 70B-shaped file  a 40 GB sparse GGUF whose header alone is real: read_gguf only
                   (reading 40 GB of holes measures the page cache, not the reader)

Each is timed cold (the file's pages dropped from the page cache with
posix_fadvise(DONTNEED) first; on filesystems that ignore it this is warm too) and warm
(median of N runs). The tests used to assert < 2 s (Gemma) and < 1 s (70B-shaped).

Usage: .venv/bin/python benchmarks/gguf_header_read.py [--runs N] [--model FILE] [--skip-gguf-reader] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idp_ops.models.gguf_meta import read_gguf  # noqa: E402

CHUNK = 1 << 20


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_whole_file(path: Path) -> int:
    total = 0
    with path.open("rb", buffering=0) as handle:
        while block := handle.read(CHUNK):
            total += len(block)
    return total


def timed(fn, path: Path, runs: int) -> dict:
    drop_from_page_cache(path)
    started = time.perf_counter()
    fn(path)
    cold = time.perf_counter() - started
    warm = []
    for _ in range(runs):
        started = time.perf_counter()
        fn(path)
        warm.append(time.perf_counter() - started)
    median = round(statistics.median(warm) * 1000, 2) if warm else None
    return {"cold_ms": round(cold * 1000, 2), "warm_ms": median, "runs": runs}


def gemma_figures(model: Path, runs: int, with_reader: bool) -> dict:
    row = read_gguf(model)
    if row.finding:
        raise SystemExit(f"{model}: {row.finding}")
    figures = {
        "file": str(model),
        "size_bytes": row.size,
        "header_bytes": row.details["data_start"],
        "read_gguf": timed(read_gguf, model, runs),
        "whole_file": timed(read_whole_file, model, runs),
    }
    if with_reader:
        from gguf import GGUFReader

        figures["gguf_reader"] = timed(GGUFReader, model, 0)  # one cold run: it takes seconds
    return figures


def seventy_b_figures(runs: int) -> dict:
    from gguf.constants import LlamaFileType

    from idp_ops_harness.gguf_files import write_gguf_header  # the harness shared with the tests

    with tempfile.TemporaryDirectory(prefix="idp-header-bench-") as tmp:
        path = Path(tmp) / "llama-70b-q4_k_m.gguf"
        write_gguf_header(path, arch="llama", layers=80, file_type=LlamaFileType.MOSTLY_Q4_K_M)
        row = read_gguf(path)
        if row.finding:
            raise SystemExit(f"synthetic 70B header: {row.finding}")
        return {
            "size_bytes": row.size,
            "header_bytes": row.details["data_start"],
            "disk_bytes": path.stat().st_blocks * 512,
            "read_gguf": timed(read_gguf, path, runs),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="warm runs per figure (median)")
    parser.add_argument("--model", help="a GGUF file (default: the demo model in the repo's models_dir)")
    parser.add_argument("--skip-gguf-reader", action="store_true", help="skip the gguf package's reader (~11 s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    if args.model:
        model = Path(args.model)
    else:
        from idp_ops.models.demo_model import fetch_demo_model
        from idp_ops.settings import REPO_ROOT, load_settings

        cwd = os.getcwd()
        os.chdir(REPO_ROOT)
        try:
            model = fetch_demo_model(load_settings().models_dir)
        finally:
            os.chdir(cwd)
    results = {
        "gemma": gemma_figures(model, args.runs, not args.skip_gguf_reader),
        "seventy_b_sparse": seventy_b_figures(args.runs),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0

    g = results["gemma"]
    print(f"{Path(g['file']).name}: {g['size_bytes']:,} bytes, header {g['header_bytes']:,} bytes")
    print(f"  {'':<28} {'cold ms':>10} {'warm ms':>10}")
    rows = [("read_gguf (header only)", g["read_gguf"]), ("read every byte", g["whole_file"])]
    if "gguf_reader" in g:
        rows.append(("gguf.GGUFReader", g["gguf_reader"]))
    for label, t in rows:
        warm = f"{t['warm_ms']:>10.1f}" if t["warm_ms"] is not None else f"{'-':>10}"
        print(f"  {label:<28} {t['cold_ms']:>10.1f} {warm}")
    r, w = g["read_gguf"], g["whole_file"]
    print(
        f"  header read / whole-file read: cold {r['cold_ms'] / w['cold_ms']:.2f}x, warm {r['warm_ms'] / w['warm_ms']:.2f}x"
        "  (the test used to assert read_gguf < 2000 ms)"
    )
    s = results["seventy_b_sparse"]
    print(
        f"\n70B-shaped sparse GGUF: {s['size_bytes']:,} bytes ({s['disk_bytes']:,} on disk), "
        f"header {s['header_bytes']:,} bytes"
    )
    print(
        f"  read_gguf (header only)      cold {s['read_gguf']['cold_ms']:.1f} ms, warm {s['read_gguf']['warm_ms']:.1f} ms"
        "  (the test used to assert < 1000 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
