"""GPU health report from a real GPU, recorded through OUR NvmlSource (issue 13).

Where an NVIDIA GPU is present it records, per device:
  - every field of one NvmlSource sample (the health fields included: ECC counts, retired pages,
    remapped rows, memory temperature, PCIe replays, power limit against the default, XIDs);
  - the fields the card answered NotSupported (NvmlSource.unsupported_fields) and what the XID
    event-set registration gave (NvmlSource.xid_registration);
  - what each NVML call behind those fields answers, called directly, with its median cost
    (an error is recorded by its pynvml class name: NVMLError_NotSupported ...);
  - the full-sample cost BEFORE (energy counter on every sample) and AFTER (counter once a
    minute, power integrated in between), medians side by side, and their ratio;
  - a short live energy check: power integrated over ``--energy-seconds`` against the counter.
and writes it as JSON to ``--out`` (atomically). With no GPU it prints the clean no-device message
and exits 0, writing nothing.

Usage: python benchmarks/gpu_health_report.py --out idp_ops_tests/fixtures/h200_health_report.json
       [--rounds N] [--energy-seconds S]
Needs only nvidia-ml-py and this repository (no install: the repo root is put on sys.path).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idp_ops.thermal.telemetry import NvmlSource, TelemetryError  # noqa: E402


def _median_us(values: list[float]) -> float:
    return round(statistics.median(values) * 1e6, 2)


def _direct_calls(pynvml, handle) -> dict[str, tuple]:
    """name -> (function, args): the NVML calls behind the health fields."""
    n = pynvml
    calls = {
        "nvmlDeviceGetPowerUsage": (n.nvmlDeviceGetPowerUsage, (handle,)),
        "nvmlDeviceGetTotalEnergyConsumption": (n.nvmlDeviceGetTotalEnergyConsumption, (handle,)),
        "nvmlDeviceGetEnforcedPowerLimit": (n.nvmlDeviceGetEnforcedPowerLimit, (handle,)),
        "nvmlDeviceGetPowerManagementDefaultLimit": (n.nvmlDeviceGetPowerManagementDefaultLimit, (handle,)),
        "nvmlDeviceGetPcieReplayCounter": (n.nvmlDeviceGetPcieReplayCounter, (handle,)),
        "nvmlDeviceGetRemappedRows": (n.nvmlDeviceGetRemappedRows, (handle,)),
        "nvmlDeviceGetRetiredPagesPendingStatus": (n.nvmlDeviceGetRetiredPagesPendingStatus, (handle,)),
        "nvmlDeviceGetRetiredPages(sbe)": (
            n.nvmlDeviceGetRetiredPages,
            (handle, n.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS),
        ),
        "nvmlDeviceGetRetiredPages(dbe)": (
            n.nvmlDeviceGetRetiredPages,
            (handle, n.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
        ),
        "nvmlDeviceGetFieldValues(MEMORY_TEMP)": (n.nvmlDeviceGetFieldValues, (handle, [n.NVML_FI_DEV_MEMORY_TEMP])),
        "nvmlDeviceGetEccMode": (n.nvmlDeviceGetEccMode, (handle,)),
    }
    for etype in ("CORRECTED", "UNCORRECTED"):
        for counter in ("VOLATILE", "AGGREGATE"):
            calls[f"nvmlDeviceGetTotalEccErrors({etype.lower()},{counter.lower()})"] = (
                n.nvmlDeviceGetTotalEccErrors,
                (handle, getattr(n, f"NVML_MEMORY_ERROR_TYPE_{etype}"), getattr(n, f"NVML_{counter}_ECC")),
            )
    return calls


def _show(value) -> object:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_show(v) for v in value][:16]
    if hasattr(value, "_length_"):  # a ctypes array of field values
        return [{"ret": v.nvmlReturn, "type": v.valueType, "ui": v.value.uiVal} for v in value]
    return repr(value)


def direct_call_report(pynvml, handle, rounds: int) -> dict:
    out = {}
    for name, (fn, args) in _direct_calls(pynvml, handle).items():
        times, answer, error = [], None, None
        for _ in range(rounds if "Energy" not in name else min(rounds, 20)):
            t = time.perf_counter()
            try:
                answer = fn(*args)
            except pynvml.NVMLError as exc:
                error = f"{type(exc).__name__}: {exc}"
            times.append(time.perf_counter() - t)
        out[name] = {"answer": None if error else _show(answer), "error": error, "cost_us_median": _median_us(times)}
    # An empty XID event set: the call each sample makes, answered with Timeout when nothing waits.
    try:
        event_set = pynvml.nvmlEventSetCreate()
        pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, event_set)
        times, outcome = [], None
        for _ in range(rounds):
            t = time.perf_counter()
            try:
                data = pynvml.nvmlEventSetWait_v2(event_set, 0)
                outcome = f"event: type {data.eventType:#x} data {data.eventData}"
            except pynvml.NVMLError as exc:
                outcome = type(exc).__name__
            times.append(time.perf_counter() - t)
        pynvml.nvmlEventSetFree(event_set)
        out["nvmlEventSetWait_v2(empty set, 0 ms)"] = {"answer": outcome, "cost_us_median": _median_us(times)}
    except pynvml.NVMLError as exc:
        out["nvmlEventSetWait_v2(empty set, 0 ms)"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def sample_cost(rounds: int) -> dict:
    before = NvmlSource(energy_read_interval_s=0)
    after = NvmlSource(energy_read_interval_s=60)
    try:
        for _ in range(3):
            before.sample()
            after.sample()
        tb, ta = [], []
        for _ in range(rounds):  # alternating: drift and boost clocks hit both alike
            t = time.perf_counter()
            before.sample()
            tb.append(time.perf_counter() - t)
            t = time.perf_counter()
            after.sample()
            ta.append(time.perf_counter() - t)
        b, a = _median_us(tb), _median_us(ta)
        return {
            "rounds": rounds,
            "devices": len(before.devices),
            "before_energy_every_sample_us_median": b,
            "after_energy_once_a_minute_us_median": a,
            "after_amortised_at_1hz_us": round((59 * a + b) / 60, 2),
            "ratio_before_over_after": round(b / a, 1),
            "after_counter_reads": after.energy_counter_reads,
        }
    finally:
        before.close()
        after.close()


def energy_check(seconds: float, hz: float = 10.0) -> dict:
    """Power integrated over ``seconds`` (counter read once at the start) against the counter."""
    if seconds <= 0:
        return {"skipped": "--energy-seconds 0"}
    src = NvmlSource(energy_read_interval_s=math.inf)
    truth = NvmlSource(energy_read_interval_s=0)
    try:
        first_ours, first_truth = src.sample(), truth.sample()
        last_ours = first_ours
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(1 / hz)
            last_ours = src.sample()
        last_truth = truth.sample()
        out = {}
        for a0, a1, t0, t1 in zip(first_ours, last_ours, first_truth, last_truth, strict=True):
            if None in (a0.energy_mj, a1.energy_mj, t0.energy_mj, t1.energy_mj):
                out[a0.device] = {"error": "energy counter or power not readable"}
                continue
            ours, counter = a1.energy_mj - a0.energy_mj, t1.energy_mj - t0.energy_mj
            out[a0.device] = {
                "seconds": seconds,
                "integrated_mj": round(ours, 1),
                "counter_mj": counter,
                "relative_error": round(ours / counter - 1, 5) if counter else None,
                "last_energy_source": a1.energy_source,
            }
        return out
    finally:
        src.close()
        truth.close()


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the JSON report goes")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--energy-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        source = NvmlSource()
    except TelemetryError as exc:
        print(f"no GPU health report on this machine: {exc}")
        return 0
    import pynvml

    try:
        samples = []
        for _ in range(3):  # NotSupported answers are learnt on the first sample
            samples = source.sample()
        report = {
            "recorded_at": datetime.now(UTC).isoformat(),
            "driver": source.driver_version,
            "nvml_version": _show(pynvml.nvmlSystemGetNVMLVersion()),
            "pynvml_version": getattr(pynvml, "__version__", None),
            "gpus": source.gpu_names,
            "xid_registration": source.xid_registration,
            "unsupported_fields": source.unsupported_fields,
            "device_errors": source.device_errors,
            "thresholds": [t.to_dict() for t in source.thresholds()],
            "sample": [s.to_dict() for s in samples],
            "direct_calls": {
                device: direct_call_report(pynvml, pynvml.nvmlDeviceGetHandleByIndex(i), args.rounds)
                for i, device in enumerate(source.devices)
            },
        }
    finally:
        source.close()
    report["sample_cost"] = sample_cost(args.rounds)
    report["energy_check"] = energy_check(args.energy_seconds)
    write_json_atomic(args.out, report)
    cost = report["sample_cost"]
    print(f"GPU health report for {report['gpus']} (driver {report['driver']}) written to {args.out}")
    print(f"  XID event set: {report['xid_registration']}")
    print(f"  NotSupported: {report['unsupported_fields']}")
    print(
        f"  full sample, median: BEFORE (energy every sample) {cost['before_energy_every_sample_us_median']:.1f} us, "
        f"AFTER (once a minute) {cost['after_energy_once_a_minute_us_median']:.1f} us, "
        f"ratio {cost['ratio_before_over_after']:.1f} x"
    )
    print(f"  energy check: {json.dumps(report['energy_check'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
