"""Cost of one telemetry sample: our NvmlSource.sample() against spawning nvidia-smi, side by side.

Where an NVIDIA GPU is present it times, over N alternating rounds:
  ours-full   NvmlSource.sample(): every field, the ~4 ms energy counter included (BEFORE:
              energy_read_interval_s=0, the counter on every sample)
  ours-after  NvmlSource.sample() as the watch runs it now: the counter once a minute, power
              integrated in between (energy_read_interval_s=60), GPU health fields included
  ours-seed5  the seed's five fields (temperature, power, utilization, memory used/total)
              through the same NVML session: the like-for-like comparison with nvidia-smi
  nvidia-smi  `nvidia-smi --query-gpu=temperature.gpu,power.draw,utilization.gpu,memory.used,
              memory.total --format=csv,noheader,nounits` as a subprocess (what the plan did)
and prints the medians and the ratios, plus one real sample, the driver thresholds and the
fields the card answered NotSupported. Where there is no GPU it prints the clean no-device
message and the H200 figures recorded in idp_ops_tests/fixtures/h200_nvml_report.json, labelled
as recorded, and exits 0.

Usage: python benchmarks/nvml_sample_cost.py [--rounds N] [--report PATH] [--json]
Needs only nvidia-ml-py and this repository (no install: the repo root is put on sys.path).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idp_ops.thermal.telemetry import NvmlSource, TelemetryError, read_nvml_sample  # noqa: E402

SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=temperature.gpu,power.draw,utilization.gpu,memory.used,memory.total",
    "--format=csv,noheader,nounits",
]
REPORT_CANDIDATES = [
    REPO / "idp_ops_tests" / "fixtures" / "h200_nvml_report.json",
    REPO.parent / "shared" / "fixtures" / "h200_nvml_report.json",
    REPO / "shared" / "fixtures" / "h200_nvml_report.json",
]


def _median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


def seed_five_fields(nvml, handle) -> tuple:
    return (
        nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
        nvml.nvmlDeviceGetPowerUsage(handle),
        nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
        nvml.nvmlDeviceGetMemoryInfo(handle),
    )


def measure(source: NvmlSource, rounds: int) -> dict:
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    smi = shutil.which("nvidia-smi")
    # AFTER: a second source as the watch opens it (counter once a minute). Its first sample reads
    # the counter; the rounds below then take well under a minute, so they show the integrated
    # sample, and the amortised figure adds one counter read per minute at 1 Hz sampling.
    after_source = NvmlSource(energy_read_interval_s=60.0)
    source.energy_read_interval_s = 0  # BEFORE: the counter on every sample
    for _ in range(3):  # warm-up: first calls load code paths and fill caches
        source.sample()
        after_source.sample()
        seed_five_fields(pynvml, handle)
        if smi:
            subprocess.run(SMI_QUERY, check=True, capture_output=True)
    full, after, five, spawn = [], [], [], []
    for _ in range(rounds):
        t = time.perf_counter()
        source.sample()
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        after_samples = after_source.sample()
        after.append(time.perf_counter() - t)
        t = time.perf_counter()
        seed_five_fields(pynvml, handle)
        five.append(time.perf_counter() - t)
        if smi:
            t = time.perf_counter()
            subprocess.run(SMI_QUERY, check=True, capture_output=True)
            spawn.append(time.perf_counter() - t)
    # One sample without the energy counter shows what that single call costs.
    no_energy = []
    for _ in range(rounds):
        t = time.perf_counter()
        read_nvml_sample(
            pynvml, handle, "gpu0", source._clock(), unsupported=set(source._unsupported["gpu0"]), read_energy=False
        )
        no_energy.append(time.perf_counter() - t)
    after_sources = sorted({s.energy_source for s in after_samples})
    after_reads = after_source.energy_counter_reads
    after_source.close()
    full_us, after_us = _median_us(full), _median_us(after)
    result = {
        "rounds": rounds,
        "gpus": source.gpu_names,
        "driver": source.driver_version,
        "ours_full_sample_us_median": full_us,
        "ours_full_sample_energy_once_a_minute_us_median": after_us,
        "ours_full_sample_energy_once_a_minute_amortised_1hz_us": (59 * after_us + full_us) / 60,
        "ratio_energy_every_sample_over_once_a_minute": full_us / after_us,
        "after_energy_sources_in_last_sample": after_sources,
        "after_energy_counter_reads": after_reads,
        "ours_full_sample_without_energy_us_median": _median_us(no_energy),
        "ours_seed_five_fields_us_median": _median_us(five),
        "nvidia_smi_ms_median": _median_us(spawn) / 1000 if spawn else None,
        "sample": [s.to_dict() for s in source.sample()],
        "thresholds": [t.to_dict() for t in source.thresholds()],
        "unsupported_fields": source.unsupported_fields,
    }
    if spawn:
        result["ratio_smi_over_full_sample"] = statistics.median(spawn) / statistics.median(full)
        result["ratio_smi_over_seed_five"] = statistics.median(spawn) / statistics.median(five)
    else:
        result["nvidia_smi_note"] = "nvidia-smi not on PATH: no subprocess comparison"
    return result


def recorded(report_path: Path | None) -> dict:
    for path in [report_path] if report_path else REPORT_CANDIDATES:
        if path and path.is_file():
            r = json.loads(path.read_text())
            smi_ms = statistics.median(r["nvidia_smi_query_ms"])
            costs = r["cost_us_per_call"]
            five_us = r["nvml_seed_fields_sample_us"]
            full_us = sum(
                costs[k]
                for k in (
                    "temperature",
                    "power_mw",
                    "energy_mj",
                    "util",
                    "memory",
                    "sm_clock",
                    "mem_clock",
                    "clocks_event_reasons",
                    "NVML_FI_DEV_POWER_INSTANT",
                )
            )
            return {
                "source": str(path),
                "gpu": r.get("name"),
                "driver": r.get("driver"),
                "nvml_seed_five_fields_us": five_us,
                "nvml_sum_of_our_fields_us": round(full_us, 2),
                "energy_counter_us": costs["energy_mj"],
                "nvidia_smi_ms_median": smi_ms,
                "ratio_smi_over_seed_five": smi_ms * 1000 / five_us,
                "ratio_smi_over_our_fields": smi_ms * 1000 / full_us,
                "nvmlInit_ms": r.get("nvmlInit_ms"),
            }
    return {"source": None, "note": "h200_nvml_report.json not found; pass --report PATH"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--report", type=Path, default=None, help="h200_nvml_report.json for the recorded figures")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        source = NvmlSource()
    except TelemetryError as exc:
        rec = recorded(args.report)
        if args.json:
            print(json.dumps({"measured": None, "no_device": str(exc), "recorded": rec}, indent=1))
            return 0
        print(f"no measurement on this machine: {exc}")
        print("RECORDED figures (not measured here), from", rec.get("source"))
        if rec.get("source"):
            print(f"  GPU {rec['gpu']}, driver {rec['driver']}, nvmlInit {rec['nvmlInit_ms']:.1f} ms (once per source)")
            print(f"  NVML, seed's five fields:          {rec['nvml_seed_five_fields_us']:10.2f} us")
            print(
                f"  NVML, sum of our sample's fields:  {rec['nvml_sum_of_our_fields_us']:10.2f} us"
                f"  (energy counter alone {rec['energy_counter_us']:.0f} us)"
            )
            print(f"  nvidia-smi --query-gpu (median):   {rec['nvidia_smi_ms_median'] * 1000:10.0f} us")
            print(f"  ratio nvidia-smi / five fields:    {rec['ratio_smi_over_seed_five']:10.0f} x")
            print(f"  ratio nvidia-smi / our fields:     {rec['ratio_smi_over_our_fields']:10.1f} x")
        else:
            print(" ", rec["note"])
        return 0
    try:
        result = measure(source, args.rounds)
    finally:
        source.close()
    if args.json:
        print(json.dumps({"measured": result, "recorded": recorded(args.report)}, indent=1, default=str))
        return 0
    print(f"MEASURED on {result['gpus']} (driver {result['driver']}), {result['rounds']} rounds, medians:")
    print(f"  ours: NvmlSource.sample() (all fields, energy incl.): {result['ours_full_sample_us_median']:10.1f} us")
    print(
        f"  ours: same, energy counter once a minute (AFTER):    "
        f"{result['ours_full_sample_energy_once_a_minute_us_median']:10.1f} us"
        f"  (amortised at 1 Hz: {result['ours_full_sample_energy_once_a_minute_amortised_1hz_us']:.1f} us)"
    )
    print(
        f"  ratio BEFORE / AFTER (median):                       "
        f"{result['ratio_energy_every_sample_over_once_a_minute']:10.1f} x"
    )
    print(
        f"  ours: same without the energy counter:               {result['ours_full_sample_without_energy_us_median']:10.1f} us"
    )
    print(
        f"  ours: seed's five fields over NVML:                  {result['ours_seed_five_fields_us_median']:10.1f} us"
    )
    if result["nvidia_smi_ms_median"] is not None:
        print(
            f"  nvidia-smi --query-gpu subprocess:                   {result['nvidia_smi_ms_median'] * 1000:10.1f} us"
        )
        print(f"  ratio nvidia-smi / NvmlSource.sample():              {result['ratio_smi_over_full_sample']:10.1f} x")
        print(f"  ratio nvidia-smi / five fields over NVML:            {result['ratio_smi_over_seed_five']:10.0f} x")
    else:
        print(" ", result["nvidia_smi_note"])
    print("one sample:", json.dumps(result["sample"]))
    print("driver thresholds:", json.dumps(result["thresholds"]))
    print("NotSupported fields (asked once, then skipped):", json.dumps(result["unsupported_fields"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
