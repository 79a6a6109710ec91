"""What every telemetry source hands out: samples, driver thresholds, errors, clocks-event reasons.

Units: temperatures in degrees C, power in W, energy in mJ (NVML's cumulative counter),
memory in MiB (what ``nvidia-smi`` prints as "MiB"; the field names keep the plan's ``_mb``),
clocks in MHz.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from idp_ops.errors import IdpOpsError

MIB = 1024 * 1024

# -- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    ts: datetime  # tz-aware UTC (naive values are taken as UTC, others converted)
    device: str  # "gpu0", "gpu1", "cpu" ...
    source: str  # "nvml" | "hwmon" | "csv"
    temperature_c: float | None = None
    power_w: float | None = None
    power_instant_w: float | None = None
    energy_mj: float | None = None  # cumulative energy counter (NVML total energy, millijoules)
    utilization_pct: float | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    throttle_reasons: tuple[str, ...] = ()  # decoded names, e.g. ("sw_power_cap",)
    throttle_mask: int | None = None
    # Added: fan speed in percent where the card has a fan (None on passive cards).
    fan_speed_pct: float | None = None
    # Added (GPU health, issue 13). None: the card answered NotSupported (or the read failed).
    # How energy_mj was obtained: "counter" (NVML's counter, ~4 ms a read, so at most once per
    # energy_read_interval_s) or "integrated" (last counter read + power integrated since).
    energy_source: str | None = None
    memory_temperature_c: float | None = None  # HBM/GDDR temperature (NVML_FI_DEV_MEMORY_TEMP)
    # ECC error counts: volatile since the driver loaded, aggregate over the card's life.
    ecc_volatile_corrected: int | None = None
    ecc_volatile_uncorrected: int | None = None
    ecc_aggregate_corrected: int | None = None
    ecc_aggregate_uncorrected: int | None = None
    # Page retirement (pre-Ampere cards): pages retired for multiple single-bit / double-bit errors.
    retired_pages_sbe: int | None = None
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None  # a retirement waits for a reboot/reset
    # Row remapping (Ampere and later): rows remapped for correctable / uncorrectable errors.
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remap_pending: bool | None = None  # a remap waits for a GPU reset
    remap_failure: bool | None = None  # a remap failed: the card needs service
    pcie_replay_count: int | None = None
    power_limit_w: float | None = None  # enforced now
    power_default_limit_w: float | None = None  # the board's default
    # XID numbers NVML reported since the previous sample (event set); None: not watched here.
    xid_errors: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", as_utc(self.ts))
        if not isinstance(self.throttle_reasons, tuple):
            object.__setattr__(self, "throttle_reasons", tuple(self.throttle_reasons))
        if self.xid_errors is not None and not isinstance(self.xid_errors, tuple):
            object.__setattr__(self, "xid_errors", tuple(int(x) for x in self.xid_errors))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ts"] = self.ts.isoformat()
        d["throttle_reasons"] = list(self.throttle_reasons)
        d["xid_errors"] = None if self.xid_errors is None else list(self.xid_errors)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        if "ts" not in values and "timestamp" in d:
            values["ts"] = d["timestamp"]
        ts = values.get("ts")
        if isinstance(ts, str):
            values["ts"] = parse_timestamp(ts)
        values["throttle_reasons"] = tuple(values.get("throttle_reasons") or ())
        return cls(**values)


# Sample fields that are not plain numbers (CSV readers parse these themselves).
TEXT_FIELDS = frozenset({"ts", "device", "source", "throttle_reasons", "energy_source", "xid_errors"})
BOOL_FIELDS = frozenset({"retired_pages_pending", "remap_pending", "remap_failure"})
INT_FIELDS = frozenset(
    {
        "throttle_mask",
        "ecc_volatile_corrected",
        "ecc_volatile_uncorrected",
        "ecc_aggregate_corrected",
        "ecc_aggregate_uncorrected",
        "retired_pages_sbe",
        "retired_pages_dbe",
        "remapped_rows_correctable",
        "remapped_rows_uncorrectable",
        "pcie_replay_count",
    }
)


def parse_bool(text: str) -> bool | None:
    """A CSV cell as a flag: true/false/1/0/yes/no; empty or n/a is None."""
    t = text.strip().lower()
    if t in ("", "n/a", "none", "null", "nan"):
        return None
    if t in ("1", "true", "yes"):
        return True
    if t in ("0", "false", "no"):
        return False
    raise ValueError(f"{text!r} is not a flag (true/false/1/0)")


@dataclass(frozen=True)
class DriverThresholds:
    device: str
    slowdown_c: float | None
    shutdown_c: float | None
    gpu_max_c: float | None
    # Added: memory max temperature and the enforced power limit, where the driver reports them.
    mem_max_c: float | None = None
    power_limit_w: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriverThresholds:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class TelemetryError(IdpOpsError, RuntimeError):
    """A source cannot deliver: NVML unavailable, the driver gone, an unreadable trace file."""


class NoDevice(TelemetryError):
    """Clean 'nothing to watch here' result: no NVIDIA library, driver or device."""


@runtime_checkable
class TelemetrySource(Protocol):
    name: str

    def sample(self) -> list[Sample]: ...

    def thresholds(self) -> list[DriverThresholds]: ...

    def close(self) -> None: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(ts: datetime) -> datetime:
    if not isinstance(ts, datetime):
        raise TypeError(f"timestamp must be a datetime, got {type(ts).__name__}")
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


# Unix epoch seconds as a log writes them; "inf"/"nan" included so they are refused by name.
_EPOCH_SECONDS = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity|nan)$", re.I)


def parse_timestamp(text: str) -> datetime:
    """ISO 8601 (``date -Iseconds``, ``...Z``, naive = UTC) or Unix epoch seconds."""
    text = text.strip()
    if not text:
        raise ValueError("empty timestamp")
    if _EPOCH_SECONDS.match(text):
        seconds = float(text)
        if not math.isfinite(seconds):
            raise ValueError(f"timestamp {text!r} is not finite")
        return datetime.fromtimestamp(seconds, UTC)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return as_utc(datetime.fromisoformat(text))


# -- clocks-event (throttle) reasons --------------------------------------------------------

# NVML's nvmlClocksEventReason* bits (identical to the older nvmlClocksThrottleReason* values).
CLOCKS_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# Reasons that mean "the card is slowing itself down because of heat / a hardware alarm".
# sw_power_cap is deliberately absent: a card under full load sits at its power cap.
THERMAL_REASONS = frozenset({"sw_thermal_slowdown", "hw_thermal_slowdown", "hw_slowdown"})


def decode_clocks_event_reasons(mask: int | None) -> tuple[str, ...]:
    """Bitmask -> reason names, lowest bit first; unknown bits come out as ``bit_0x...``."""
    if not mask:
        return ()
    names = []
    bit = 1
    remaining = int(mask)
    while remaining:
        if remaining & bit:
            names.append(CLOCKS_EVENT_REASONS.get(bit, f"bit_{bit:#x}"))
            remaining &= ~bit
        bit <<= 1
    return tuple(names)
