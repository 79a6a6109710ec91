"""A live thermal trace on a real NVIDIA GPU, through idp_ops' own NVML source and policy.

Samples every GPU through NvmlSource at 2 Hz: idle, then a bf16 matmul load
(PyTorch, where installed), then cool-down. Writes the samples in our CSV format
(CsvReplaySource reads them back), prints the driver thresholds, the fields the
card answered NotSupported, and the policy's decisions with its lines scaled just
above the idle temperature so a short load crosses them (the real lines, 85/90 °C,
are not reached in a minute). Exits 0 with a clear message where there is no GPU.

Usage: python benchmarks/nvml_live_trace.py [--idle 5] [--load 30] [--cool 10] [--out DIR]
Needs only nvidia-ml-py (and torch for the load) and this repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idp_ops.thermal.policy import PolicyConfig, replay  # noqa: E402
from idp_ops.thermal.telemetry import CsvReplaySource, NoDevice, NvmlSource, write_samples_csv  # noqa: E402


def matmul_load(stop: threading.Event) -> str:
    try:
        import torch
    except ImportError:
        return "no torch: idle trace only"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    while not stop.is_set():
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
    return "bf16 8192^3 matmuls"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=float, default=5)
    parser.add_argument("--load", type=float, default=30)
    parser.add_argument("--cool", type=float, default=10)
    parser.add_argument("--hz", type=float, default=2)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    try:
        source = NvmlSource(energy_read_interval_s=0)  # a recorded trace keeps the counter on every row
    except NoDevice as exc:
        print(f"no GPU here: {exc}")
        return 0
    print("devices:", source.devices if hasattr(source, "devices") else "?", getattr(source, "gpu_names", ""))
    print("driver:", getattr(source, "driver_version", "?"))
    print("thresholds:", json.dumps([t.to_dict() for t in source.thresholds()], default=str))
    samples, stop, load_result = [], threading.Event(), {}
    worker = None
    started = time.monotonic()
    phases = [("idle", args.idle), ("load", args.load), ("cool", args.cool)]
    for phase, seconds in phases:
        if phase == "load":
            worker = threading.Thread(target=lambda: load_result.update(what=matmul_load(stop)))
            worker.start()
        if phase == "cool" and worker:
            stop.set()
            worker.join()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            samples += source.sample()
            time.sleep(max(0, 1 / args.hz - (time.perf_counter() - t0)))
    print("load:", load_result.get("what", "none"))
    print("unsupported fields:", getattr(source, "unsupported_fields", {}))
    source.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = write_samples_csv(samples, out / "live_trace.csv")
    back = CsvReplaySource(path).samples()
    assert len(back) == len(samples), (len(back), len(samples))
    temps = [s.temperature_c for s in samples if s.temperature_c is not None]
    powers = [s.power_w for s in samples if s.power_w is not None]
    idle = min(temps)
    print(
        f"{len(samples)} samples in {time.monotonic() - started:.0f} s; temperature {min(temps)}..{max(temps)} C; "
        f"power {min(powers):.0f}..{max(powers):.0f} W; reasons seen: "
        f"{sorted({r for s in samples for r in s.throttle_reasons})}"
    )
    energy = [s.energy_mj for s in samples if s.energy_mj is not None]
    if len(energy) > 1:
        print(f"energy over the trace: {(energy[-1] - energy[0]) / 3.6e6:.3f} Wh")
    config = PolicyConfig(
        warn_c=idle + 6, contain_c=idle + 9, slowdown_margin_c=3, consecutive_samples=2, hysteresis_c=2, clear_after_s=3
    )
    decisions = replay(back, config, [])
    print(f"policy with lines scaled to warn {config.warn_c} C / contain {config.contain_c} C:")
    for d in decisions:
        print("  ", json.dumps(d.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
