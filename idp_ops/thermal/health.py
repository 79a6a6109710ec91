"""GPU health judging (issue 13): samples in, health events out. Pure: no I/O, no clock, stdlib only.

What raises an alert, once per event (never once per tick):
- an XID reported by NVML's event set: one alert per XID number per sample (a burst of the
  same XID drained in one sample is one alert with its count);
- a new uncorrectable ECC error: the volatile or the aggregate uncorrected count rising
  above the last value seen. The first sample of a device sets the baseline, except that
  a non-zero VOLATILE count on first sight is alerted (errors since the driver loaded that
  no watch has reported); a fresh watch state does not re-alert the card's lifetime count.
  A volatile count that drops (driver reloaded) is a new baseline, not a rise;
- a row remap pending (a GPU reset will apply it), a row remap failure (the card needs
  service) or a page retirement pending (pre-Ampere cards): once when the flag turns on,
  again only after it has been seen off.

What contains: the XIDs in :data:`FATAL_XIDS`, which mean the card is unusable until a reset
or a repair; everything else is an alert for a person. The containment policy
(policy.ThermalPolicy) turns a fatal event into a ``contain`` decision with its own episode.

The state (last counts and flags per device, event numbers for the alert ids) is a
JSON-ready dict that the watch carries in its cursor with the thermal policy's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from idp_ops.thermal.samples import Sample

# NVIDIA's XID catalogue (docs.nvidia.com/deploy/xid-errors): the XIDs after which the GPU
# cannot be trusted to run the service until it is reset, the node rebooted, or the card repaired.
FATAL_XIDS: dict[int, str] = {
    48: "double-bit (uncorrectable) ECC error: GPU reset required",
    62: "internal micro-controller halted: GPU reset required",
    64: "ECC page retirement / row remapper recording failure: GPU reset, then service",
    74: "NVLink error: GPU reset required",
    79: "GPU has fallen off the bus: node reboot required",
    95: "uncontained ECC error: every process on the GPU is affected, GPU reset required",
    119: "GSP RPC timeout: the GPU System Processor stopped answering, GPU reset required",
    120: "GSP error: the GPU System Processor faulted, GPU reset required",
    140: "unrecovered ECC error: GPU reset required",
}
# Known XIDs that are alerts, not containment, and why (the alert says so).
NON_FATAL_XIDS: dict[int, str] = {
    13: "graphics engine exception: usually the application; restart it",
    31: "GPU memory page fault: usually the application; restart it",
    43: "GPU stopped processing: the application; restart it",
    63: "row remapping / page retirement recorded: reset the GPU when convenient to apply it",
    92: "high single-bit ECC error rate: corrected, but the memory is degrading; plan service",
    94: "contained ECC error: only the affected application was stopped; reset when convenient",
}

XID, ECC, REMAP, RETIRE = "xid", "ecc", "remap", "retire"


@dataclass(frozen=True)
class HealthEvent:
    """One thing worth an alert. ``kind``: xid / ecc / remap / retire; ``n``: the device's
    event number of that kind (the alert id); ``fatal``: contain the GPU service."""

    device: str
    kind: str
    n: int
    reason: str
    fatal: bool = False


def describe_xid(xid: int) -> str:
    if xid in FATAL_XIDS:
        return f"XID {xid}: {FATAL_XIDS[xid]}"
    if xid in NON_FATAL_XIDS:
        return f"XID {xid}: {NON_FATAL_XIDS[xid]}"
    return f"XID {xid} (not in our catalogue: see NVIDIA's XID list)"


class HealthJudge:
    """Per device memory of counters and flags; ``observe(sample)`` -> new HealthEvents."""

    def __init__(self, state: dict[str, Any] | None = None, *, fatal_xids: dict[int, str] | None = None):
        self.fatal_xids = FATAL_XIDS if fatal_xids is None else fatal_xids
        self._devices: dict[str, dict[str, Any]] = {d: dict(s) for d, s in ((state or {}).get("devices") or {}).items()}

    def state(self) -> dict[str, Any]:
        return {"devices": {d: dict(s) for d, s in sorted(self._devices.items())}}

    def _next(self, st: dict[str, Any], kind: str) -> int:
        counts = st.setdefault("events", {})
        counts[kind] = int(counts.get(kind, 0)) + 1
        return counts[kind]

    def observe(self, sample: Sample) -> list[HealthEvent]:
        st = self._devices.setdefault(sample.device, {})
        out: list[HealthEvent] = []
        out += self._xids(sample, st)
        out += self._ecc(sample, st)
        out += self._flags(sample, st)
        return out

    def _xids(self, sample: Sample, st: dict[str, Any]) -> list[HealthEvent]:
        out = []
        counts: dict[int, int] = {}
        for xid in sample.xid_errors or ():
            counts[xid] = counts.get(xid, 0) + 1
        for xid, count in counts.items():
            fatal = xid in self.fatal_xids
            reason = (f"XID {xid}: {self.fatal_xids[xid]}" if fatal else describe_xid(xid)) + (
                f" ({count} events)" if count > 1 else ""
            )
            out.append(HealthEvent(sample.device, XID, self._next(st, XID), reason, fatal))
        return out

    def _ecc(self, sample: Sample, st: dict[str, Any]) -> list[HealthEvent]:
        rises = []
        for field, label in (
            ("ecc_volatile_uncorrected", "volatile (since the driver loaded)"),
            ("ecc_aggregate_uncorrected", "aggregate (card lifetime)"),
        ):
            value = getattr(sample, field)
            if value is None:
                continue  # unknown this time: keep the last value
            last = st.get(field)
            if last is None:
                if field == "ecc_volatile_uncorrected" and value > 0:
                    rises.append(f"{label} uncorrectable ECC errors: {value} on first sight")
            elif value > last:
                rises.append(f"{label} uncorrectable ECC errors rose {last} -> {value}")
            st[field] = value
        if not rises:
            return []
        return [HealthEvent(sample.device, ECC, self._next(st, ECC), "; ".join(rises))]

    def _flags(self, sample: Sample, st: dict[str, Any]) -> list[HealthEvent]:
        out = []
        for field, kind, reason in (
            ("remap_pending", REMAP, "row remap pending: reset the GPU (when idle) to apply it"),
            (
                "remap_failure",
                REMAP,
                "row remapping FAILED: the memory cannot be repaired in place; the card needs service",
            ),
            ("retired_pages_pending", RETIRE, "page retirement pending: reboot (or reset the GPU) to apply it"),
        ):
            value = getattr(sample, field)
            if value is None:
                continue
            was = bool(st.get(field, False))
            if value and not was:
                detail = reason
                if kind == REMAP and sample.remapped_rows_uncorrectable is not None:
                    detail += (
                        f" (rows remapped: {sample.remapped_rows_uncorrectable} uncorrectable, "
                        f"{sample.remapped_rows_correctable} correctable)"
                    )
                out.append(HealthEvent(sample.device, kind, self._next(st, kind), detail))
            st[field] = bool(value)
        return out


__all__ = [
    "ECC",
    "FATAL_XIDS",
    "NON_FATAL_XIDS",
    "REMAP",
    "RETIRE",
    "XID",
    "HealthEvent",
    "HealthJudge",
    "describe_xid",
]
