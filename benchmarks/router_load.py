"""Router mode against a dedicated server of the same model, side by side: load time and warm TTFT.

Two llama-server containers from our image, hardened as compose runs them (read-only root, cap_drop ALL,
no-new-privileges, the service uid, 1 CPU, a memory limit, the key from a mounted file), measured one
after the other (never both at once, so neither takes the other's cores):

  router     --models-preset (Gemma 3 270M and a tiny GGUF, each with its own context), --models-max 1
  dedicated  --model Gemma 3 270M, the same context, threads and slots

Per round (medians over --rounds):

  router explicit load    Gemma unloaded, then POST /models/load polled (25 ms) until "loaded"
  router first request    Gemma unloaded, then a 1-token streamed completion: TTFT including the on-demand load
  router warm TTFT        --warm streamed completions once loaded (each prompt new: no prefix cache)
  dedicated cold start    container start -> /health 200 (the dedicated server's load)
  dedicated warm TTFT     the same warm requests against the dedicated server

Usage: .venv/bin/python benchmarks/router_load.py [--rounds N] [--warm N] [--json]
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idp_ops.models.router import RouterClient, RouterEntry, render_preset  # noqa: E402
from idp_ops.settings import DEMO_MODEL_FILE, RouterOptions, load_settings  # noqa: E402
from idp_ops_harness.ports import free_port  # noqa: E402
from idp_ops_harness.tiny_gguf import write_tiny_gguf  # noqa: E402

CTX = 2048
GEMMA = "gemma-3-270m"


def hardened_run(name: str, image: str, port: int, workdir: Path, args: list[str]) -> None:
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp:size=64m", "--cap-drop", "ALL",
         "--security-opt", "no-new-privileges:true", "-u", "65534:65534", "--cpus", "1", "-m", "2g",
         "-p", f"127.0.0.1:{port}:8080", "-v", f"{workdir / 'models'}:/models:ro",
         "-v", f"{workdir / 'presets'}:/presets:ro", "-v", f"{workdir / 'key'}:/run/secrets/key:ro",
         image, "--host", "0.0.0.0", "--port", "8080", "--api-key-file", "/run/secrets/key", "--no-webui", *args],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def wait_health(url: str, timeout_s: float = 120) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} not healthy after {timeout_s} s")


def ttft(url: str, key: str, model: str) -> float:
    """Seconds to the first streamed token of a 1-token completion with a prompt never sent before."""
    prompt = f"Request {secrets.token_hex(4)}. Write a short explanation of bandwidth:"
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "stream": True, "temperature": 0}
    started = time.perf_counter()
    with httpx.stream(
        "POST", f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text"' in line:
                return time.perf_counter() - started
    raise RuntimeError("no token streamed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warm", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = load_settings(REPO / "idp-ops.yaml") if (REPO / "idp-ops.yaml").exists() else load_settings()
    image = settings.llama_server_image
    gemma = settings.models_dir / DEMO_MODEL_FILE
    key = secrets.token_hex(32)
    names = [f"idp-router-bench-{secrets.token_hex(3)}", f"idp-dedicated-bench-{secrets.token_hex(3)}"]
    with tempfile.TemporaryDirectory(prefix="idp-router-bench-") as tmp:
        work = Path(tmp)
        (work / "models").mkdir()
        (work / "presets").mkdir()
        shutil.copy2(gemma, work / "models" / DEMO_MODEL_FILE)
        write_tiny_gguf(work / "models" / "tiny.gguf", seed=7)
        entries = [
            RouterEntry(GEMMA, DEMO_MODEL_FILE, gemma.stat().st_size, CTX, 1, None),
            RouterEntry("tiny", "tiny.gguf", 0, 1024, 1, None),
        ]
        (work / "presets" / "llamacpp-router.ini").write_text(render_preset(entries, RouterOptions()))
        (work / "key").write_text(key)
        for path in [work, *work.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        router_port, dedicated_port = free_port(), free_port()
        router_url, dedicated_url = f"http://127.0.0.1:{router_port}", f"http://127.0.0.1:{dedicated_port}"
        figures: dict[str, list[float]] = {k: [] for k in ("explicit", "first", "router_warm", "cold", "dedicated")}
        try:
            hardened_run(names[0], image, router_port, work, ["--models-preset", "/presets/llamacpp-router.ini",
                                                               "--models-max", "1", "--metrics"])  # fmt: skip
            wait_health(router_url)
            with RouterClient(router_url, key) as client:
                for _ in range(args.rounds):
                    client.unload(GEMMA)
                    figures["explicit"].append(client.load(GEMMA))
                    client.unload(GEMMA)
                    figures["first"].append(ttft(router_url, key, GEMMA))
                    figures["router_warm"] += [ttft(router_url, key, GEMMA) for _ in range(args.warm)]
            subprocess.run(["docker", "rm", "-f", names[0]], capture_output=True, timeout=60)
            for _ in range(args.rounds):
                subprocess.run(["docker", "rm", "-f", names[1]], capture_output=True, timeout=60)
                started = time.perf_counter()
                hardened_run(names[1], image, dedicated_port, work, ["--model", f"/models/{DEMO_MODEL_FILE}",
                             "--alias", GEMMA, "--ctx-size", str(CTX), "--threads", "1", "--parallel", "4",
                             "--metrics"])  # fmt: skip
                wait_health(dedicated_url)
                figures["cold"].append(time.perf_counter() - started)
                ttft(dedicated_url, key, GEMMA)  # discarded, as the router's first request is
                figures["dedicated"] += [ttft(dedicated_url, key, GEMMA) for _ in range(args.warm)]
        finally:
            for name in names:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
    med = {k: statistics.median(v) * 1000 for k, v in figures.items()}
    rows = [
        ("load: router explicit (POST /models/load)", med["explicit"], None),
        ("load: router first request TTFT (on demand)", med["first"], None),
        ("load: dedicated container start -> healthy", med["cold"], None),
        ("warm TTFT: router", med["router_warm"], med["router_warm"] / med["dedicated"]),
        ("warm TTFT: dedicated", med["dedicated"], 1.0),
    ]
    if args.json:
        print(json.dumps({"rounds": args.rounds, "warm": args.warm, "median_ms": med}, indent=2))
        return 0
    print(f"Gemma 3 270M, ctx {CTX}, 1 thread, 1 CPU; medians of {args.rounds} loads, {args.rounds * args.warm} warm")
    print(f"{'':48} {'median ms':>10} {'vs dedicated':>13}")
    for label, value, ratio in rows:
        print(f"{label:48} {value:10.1f} {'' if ratio is None else f'{ratio:.2f}x':>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
