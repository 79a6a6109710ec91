"""Telemetry sources: NVML (GPU), hwmon via psutil (CPU), and CSV replay of logged traces.

Plain Python, no Dagster. Every source answers ``sample()`` with one :class:`Sample`
per device, stamped in UTC, and ``thresholds()`` with the driver's own temperature
limits where it knows them.

NVML facts this module rests on (measured on an H200, ``idp_ops_tests/fixtures/h200_nvml_report.json``):
``nvmlInit`` costs ~9 ms (done once per source), the seed's five fields ~12 us together,
``nvmlDeviceGetTotalEnergyConsumption`` ~4 ms (read at most once per sample), and a
NotSupported answer (fan speed on a passive card) costs ~140 us: a field that answered
NotSupported once is remembered per device and not asked again.

Units: temperatures in degrees C, power in W, energy in mJ (NVML's cumulative counter),
memory in MiB (what ``nvidia-smi`` prints as "MiB"; the field names keep the plan's ``_mb``),
clocks in MHz.
"""

from __future__ import annotations

import contextlib
import csv
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", as_utc(self.ts))
        if not isinstance(self.throttle_reasons, tuple):
            object.__setattr__(self, "throttle_reasons", tuple(self.throttle_reasons))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ts"] = self.ts.isoformat()
        d["throttle_reasons"] = list(self.throttle_reasons)
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


# -- NVML ------------------------------------------------------------------------------------

# Error codes meaning the driver (or the card) is gone: sampling cannot go on, the caller must know.
_DRIVER_GONE_CODES = {
    "NVML_ERROR_UNINITIALIZED": 1,
    "NVML_ERROR_DRIVER_NOT_LOADED": 9,
    "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_ERROR_RESET_REQUIRED": 16,
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": 18,
}
_NOT_SUPPORTED = 3
_FUNCTION_NOT_FOUND = 13


def _code(nvml: Any, name: str, default: int) -> int:
    return getattr(nvml, name, default)


def _error_value(exc: BaseException) -> int | None:
    return getattr(exc, "value", None)


def is_driver_gone(nvml: Any, exc: BaseException) -> bool:
    codes = {_code(nvml, name, default) for name, default in _DRIVER_GONE_CODES.items()}
    return _error_value(exc) in codes


def is_not_supported(nvml: Any, exc: BaseException) -> bool:
    cls = getattr(nvml, "NVMLError_NotSupported", None)
    return (cls is not None and isinstance(exc, cls)) or _error_value(exc) == _code(
        nvml, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED
    )


def _nvml_error_class(nvml: Any) -> type[BaseException]:
    return getattr(nvml, "NVMLError", Exception)


class FieldReader:
    """Reads NVML fields for one device, tolerating every per-field failure.

    ``read(field, fn, *args)`` returns ``fn(*args)`` or None when the field fails. A
    NotSupported field is remembered (``unsupported``) and not asked again: it is a
    capability of the card, and asking costs ~140 us each time. Other NVML errors give
    None and are kept in ``errors`` (field -> message) for this sample. An error that
    means the driver is gone raises :class:`TelemetryError`.
    """

    def __init__(self, nvml: Any, device: str, unsupported: set[str] | None = None):
        self.nvml = nvml
        self.device = device
        self.unsupported = unsupported if unsupported is not None else set()
        self.errors: dict[str, str] = {}

    def read(self, name: str, fn: Callable[..., Any] | None, *args: Any) -> Any:
        if name in self.unsupported:
            return None
        if fn is None:  # the binding lacks the function: same as NotSupported
            self.unsupported.add(name)
            return None
        try:
            return fn(*args)
        except _nvml_error_class(self.nvml) as exc:
            if is_driver_gone(self.nvml, exc):
                raise TelemetryError(f"NVIDIA driver gone ({self.device}, reading {name}): {exc}") from exc
            if is_not_supported(self.nvml, exc) or _error_value(exc) == _code(
                self.nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", _FUNCTION_NOT_FOUND
            ):
                self.unsupported.add(name)
            else:
                self.errors[name] = str(exc) or type(exc).__name__
            return None


def _number(value: Any, scale: float = 1.0) -> float | None:
    if value is None:
        return None
    return float(value) / scale


def _field_value(nvml: Any, fv: Any) -> float | None:
    """One ``c_nvmlFieldValue_t`` -> number, None if its own return code is not success."""
    if getattr(fv, "nvmlReturn", 0) != _code(nvml, "NVML_SUCCESS", 0):
        return None
    member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}.get(
        int(getattr(fv, "valueType", 1)), "uiVal"
    )
    return float(getattr(fv.value, member))


def read_clocks_event_mask(reader: FieldReader, handle: Any) -> int | None:
    """Current clocks-event reasons; falls back to the pre-12.535 'throttle reasons' call."""
    nvml = reader.nvml
    if "clocks_event_reasons" not in reader.unsupported:
        mask = reader.read(
            "clocks_event_reasons", getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None), handle
        )
        if mask is not None:
            return int(mask)
        if "clocks_event_reasons" not in reader.unsupported:
            return None  # a transient error, not a missing function: do not ask the old name too
    mask = reader.read("throttle_reasons", getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None), handle)
    return None if mask is None else int(mask)


def read_nvml_sample(
    nvml: Any,
    handle: Any,
    device: str,
    ts: datetime,
    *,
    unsupported: set[str] | None = None,
    read_energy: bool = True,
    read_fan: bool = True,
) -> Sample:
    """One Sample of every field from one NVML device handle.

    ``nvml`` is the ``pynvml`` module (or anything with its names). Each field is one
    call; the energy counter is read exactly once (it is the expensive one, ~4 ms).
    """
    r = FieldReader(nvml, device, unsupported)
    temperature = r.read("temperature", nvml.nvmlDeviceGetTemperature, handle, _code(nvml, "NVML_TEMPERATURE_GPU", 0))
    power_mw = r.read("power", nvml.nvmlDeviceGetPowerUsage, handle)
    instant_w = None
    if "power_instant" not in r.unsupported:
        field_id = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
        if field_id is None:
            r.unsupported.add("power_instant")
        else:
            values = r.read("power_instant", getattr(nvml, "nvmlDeviceGetFieldValues", None), handle, [field_id])
            if values is not None:
                instant_mw = _field_value(nvml, values[0])
                if instant_mw is None:
                    # The field's own return code said no: on this card it is NotSupported.
                    r.unsupported.add("power_instant")
                else:
                    instant_w = instant_mw / 1000.0
    energy = r.read("energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle) if read_energy else None
    util = r.read("utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
    memory = r.read("memory", nvml.nvmlDeviceGetMemoryInfo, handle)
    sm_clock = r.read("sm_clock", nvml.nvmlDeviceGetClockInfo, handle, _code(nvml, "NVML_CLOCK_SM", 1))
    mem_clock = r.read("mem_clock", nvml.nvmlDeviceGetClockInfo, handle, _code(nvml, "NVML_CLOCK_MEM", 2))
    mask = read_clocks_event_mask(r, handle)
    fan = r.read("fan", getattr(nvml, "nvmlDeviceGetFanSpeed", None), handle) if read_fan else None
    return Sample(
        ts=ts,
        device=device,
        source="nvml",
        temperature_c=_number(temperature),
        power_w=_number(power_mw, 1000.0),
        power_instant_w=instant_w,
        energy_mj=_number(energy),
        utilization_pct=_number(getattr(util, "gpu", None)),
        memory_used_mb=_number(getattr(memory, "used", None), MIB),
        memory_total_mb=_number(getattr(memory, "total", None), MIB),
        sm_clock_mhz=_number(sm_clock),
        mem_clock_mhz=_number(mem_clock),
        throttle_reasons=decode_clocks_event_reasons(mask),
        throttle_mask=mask,
        fan_speed_pct=_number(fan),
    )


def _plausible_c(value: Any) -> float | None:
    # The driver answers 0 or 0xFFFFFFFE-style sentinels where a limit is not set.
    if value is None:
        return None
    v = float(value)
    return v if 0 < v < 200 else None


def read_nvml_thresholds(nvml: Any, handle: Any, device: str) -> DriverThresholds:
    r = FieldReader(nvml, device)
    get = nvml.nvmlDeviceGetTemperatureThreshold

    def threshold(name: str, const: str, default: int) -> float | None:
        return _plausible_c(r.read(name, get, handle, _code(nvml, const, default)))

    limit_mw = r.read("power_limit", getattr(nvml, "nvmlDeviceGetEnforcedPowerLimit", None), handle)
    return DriverThresholds(
        device=device,
        slowdown_c=threshold("slowdown", "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN", 1),
        shutdown_c=threshold("shutdown", "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN", 0),
        gpu_max_c=threshold("gpu_max", "NVML_TEMPERATURE_THRESHOLD_GPU_MAX", 3),
        mem_max_c=threshold("mem_max", "NVML_TEMPERATURE_THRESHOLD_MEM_MAX", 2),
        power_limit_w=_number(limit_mw, 1000.0),
    )


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise NoDevice(f"no NVML binding: nvidia-ml-py is not installed ({exc})") from exc
    return pynvml


class NvmlSource:
    """GPU telemetry through NVML (``nvidia-ml-py``). ``nvmlInit`` once, here.

    Raises :class:`NoDevice` when the library, the driver or any device is missing,
    :class:`TelemetryError` on other NVML start-up failures. ``nvml`` replaces the
    ``pynvml`` module (tests drive the field-reading code with a stand-in).
    """

    name = "nvml"

    def __init__(
        self,
        *,
        nvml: Any = None,
        clock: Callable[[], datetime] = utc_now,
        read_energy: bool = True,
        read_fan: bool = True,
    ):
        self._nvml = nvml if nvml is not None else _import_pynvml()
        self._clock = clock
        self._read_energy = read_energy
        self._read_fan = read_fan
        self._open = False
        # Devices whose last sample failed (fell off the bus, reset required): device -> error.
        self.device_errors: dict[str, str] = {}
        nv = self._nvml
        error = _nvml_error_class(nv)
        try:
            nv.nvmlInit()
        except error as exc:
            code = _error_value(exc)
            if code in (
                _code(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", 12),
                _code(nv, "NVML_ERROR_DRIVER_NOT_LOADED", 9),
                _code(nv, "NVML_ERROR_GPU_NOT_FOUND", 28),
                _code(nv, "NVML_ERROR_NOT_FOUND", 6),
            ):
                raise NoDevice(f"no NVIDIA device: {exc}") from exc
            raise TelemetryError(f"NVML unavailable: {exc}") from exc
        self._open = True
        try:
            count = int(nv.nvmlDeviceGetCount())
            if count == 0:
                raise NoDevice("no NVIDIA device: NVML found 0 GPUs")
            self.devices = [f"gpu{i}" for i in range(count)]
            self._handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._unsupported: dict[str, set[str]] = {d: set() for d in self.devices}
            self.driver_version = _decode(_try(nv, "nvmlSystemGetDriverVersion"))
            self.gpu_names = {
                d: _decode(_try(nv, "nvmlDeviceGetName", h)) for d, h in zip(self.devices, self._handles, strict=True)
            }
            # Read once per start: the limits do not change while the driver runs.
            self._thresholds = [
                read_nvml_thresholds(nv, h, d) for d, h in zip(self.devices, self._handles, strict=True)
            ]
        except error as exc:
            self.close()
            if is_driver_gone(nv, exc):
                raise TelemetryError(f"NVIDIA driver gone: {exc}") from exc
            raise TelemetryError(f"NVML unavailable: {exc}") from exc
        except BaseException:
            self.close()
            raise

    @property
    def unsupported_fields(self) -> dict[str, list[str]]:
        """Fields each device answered NotSupported (not asked again)."""
        return {d: sorted(s) for d, s in self._unsupported.items()}

    def sample(self) -> list[Sample]:
        """One sample per device. A device that fell off the bus is left out and named in
        ``device_errors``; the others are still sampled. Raises TelemetryError only when
        every device failed (the driver itself is gone): the caller reopens NVML later."""
        if not self._open:
            raise TelemetryError("NVML source is closed")
        samples: list[Sample] = []
        self.device_errors = {}
        for device, handle in zip(self.devices, self._handles, strict=True):
            try:
                samples.append(
                    read_nvml_sample(
                        self._nvml,
                        handle,
                        device,
                        self._clock(),
                        unsupported=self._unsupported[device],
                        read_energy=self._read_energy,
                        read_fan=self._read_fan,
                    )
                )
            except TelemetryError as exc:
                self.device_errors[device] = str(exc)
        if not samples:
            raise TelemetryError("; ".join(self.device_errors.values()) or "NVML answered for no device")
        return samples

    def thresholds(self) -> list[DriverThresholds]:
        return list(self._thresholds)

    def close(self) -> None:
        if self._open:
            self._open = False
            # Shutting down a library whose driver is already gone is not a new failure.
            with contextlib.suppress(_nvml_error_class(self._nvml)):
                self._nvml.nvmlShutdown()

    def __enter__(self) -> NvmlSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _try(nvml: Any, fn_name: str, *args: Any) -> Any:
    fn = getattr(nvml, fn_name, None)
    if fn is None:
        return None
    try:
        return fn(*args)
    except _nvml_error_class(nvml):
        return None


def _decode(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


# -- hwmon -----------------------------------------------------------------------------------


class HwmonSource:
    """CPU temperature from hwmon through ``psutil.sensors_temperatures()``.

    Devices:
    - AMD ``k10temp``: ``Tctl`` -> device ``cpu`` (the value thresholds apply to);
      the hottest ``Tccd*`` -> a second sample, device ``cpu-ccd`` (informative: kept in
      the history, the GPU containment policy should not be fed either).
    - Intel ``coretemp``: ``Package id N`` -> ``cpu`` (N = 0), ``cpuN`` otherwise.
    - ``zenpower`` (out-of-tree AMD driver): ``Tdie`` -> ``cpu``.
    A second socket's chip gets ``cpu1`` / ``cpu1-ccd``. No sensor: ``sample()`` returns [].
    ``sample()`` never raises: a psutil failure is kept in ``last_error`` and gives [].
    """

    name = "hwmon"

    def __init__(self, *, clock: Callable[[], datetime] = utc_now):
        self._clock = clock
        self.last_error: str | None = None

    def _sensors(self) -> dict[str, list[Any]]:
        import psutil  # imported here: the NVML benchmark needs nothing but nvidia-ml-py

        fn = getattr(psutil, "sensors_temperatures", None)
        return fn() if fn is not None else {}  # absent on macOS/Windows

    def sample(self) -> list[Sample]:
        try:
            sensors = self._sensors() or {}
            self.last_error = None
        except Exception as exc:  # psutil reading sysfs: never a reason to stop watching the GPU
            self.last_error = f"{type(exc).__name__}: {exc}"
            return []
        return cpu_samples_from_sensors(sensors, self._clock())

    def thresholds(self) -> list[DriverThresholds]:
        return []

    def close(self) -> None:
        pass


def cpu_samples_from_sensors(sensors: dict[str, list[Any]], ts: datetime) -> list[Sample]:
    """psutil.sensors_temperatures() output -> CPU Samples (see HwmonSource for the devices)."""
    out: list[Sample] = []
    for chip, (primary, extra) in _cpu_readings(sensors):
        name = "cpu" if chip == 0 else f"cpu{chip}"
        if primary is not None:
            out.append(Sample(ts=ts, device=name, source="hwmon", temperature_c=primary))
        if extra is not None:
            out.append(Sample(ts=ts, device=f"{name}-ccd", source="hwmon", temperature_c=extra))
    return out


def _valid_temp(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and -50 < v < 200 else None


def _cpu_readings(sensors: dict[str, list[Any]]) -> list[tuple[int, tuple[float | None, float | None]]]:
    """(chip index, (primary temperature, hottest CCD or None)) per CPU package."""
    chips: list[tuple[float | None, float | None]] = []
    amd = sensors.get("k10temp") or []
    if amd:
        # psutil flattens every k10temp instance into one list: a new Tctl starts a new chip.
        current: list[Any] = []
        groups: list[list[Any]] = []
        for entry in amd:
            if entry.label == "Tctl" and any(e.label == "Tctl" for e in current):
                groups.append(current)
                current = []
            current.append(entry)
        groups.append(current)
        for group in groups:
            tctl = next((_valid_temp(e.current) for e in group if e.label == "Tctl"), None)
            ccds = [t for e in group if e.label.startswith("Tccd") and (t := _valid_temp(e.current)) is not None]
            if tctl is None:  # old kernels label the only value "" or "Tdie"
                tctl = next((_valid_temp(e.current) for e in group if e.label in ("Tdie", "")), None)
            chips.append((tctl, max(ccds) if ccds else None))
        return list(enumerate(chips))
    intel = sensors.get("coretemp") or []
    packages = []
    for entry in intel:
        m = re.fullmatch(r"Package id (\d+)", entry.label or "")
        if m and (t := _valid_temp(entry.current)) is not None:
            packages.append((int(m.group(1)), (t, None)))
    if packages:
        return sorted(packages)
    zen = sensors.get("zenpower") or []
    tdie = next((_valid_temp(e.current) for e in zen if e.label == "Tdie"), None)
    return [(0, (tdie, None))] if tdie is not None else []


# -- CSV replay ------------------------------------------------------------------------------

PLAN_COLUMNS = ("timestamp", "temperature_c", "power_w", "utilization_pct", "memory_used_mb", "memory_total_mb")
# Our own CSV: "timestamp", then Sample's fields by name (the plan's columns are a subset).
SAMPLE_CSV_COLUMNS = ("timestamp",) + tuple(f.name for f in fields(Sample) if f.name != "ts")
# The NVML probe trace (idp_ops_tests/fixtures/h200_trace.csv): relative seconds and raw NVML units.
PROBE_COLUMNS = ("t_s", "temperature", "power_mw", "energy_mj", "util", "memory", "sm_clock", "clocks_event_reasons")

_MISSING = {"", "n/a", "[n/a]", "na", "none", "null", "[not supported]", "not supported", "nan"}
_FLOAT_FIELDS = {
    f.name for f in fields(Sample) if f.name not in ("ts", "device", "source", "throttle_reasons", "throttle_mask")
}
# The default base for relative timestamps (t_s): the Unix epoch, so t_s reads as epoch seconds
# and a replay is deterministic. Pass base_time for a real date.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _RowError(ValueError):
    pass


def _cell_float(column: str, text: str) -> float | None:
    t = text.strip()
    if t.lower() in _MISSING:
        return None
    try:
        v = float(t)
    except ValueError:
        raise _RowError(f"{column} {text!r} is not a number") from None
    if not math.isfinite(v):
        raise _RowError(f"{column} {text!r} is not finite")
    return v


def _cell_int(column: str, text: str) -> int | None:
    t = text.strip()
    if t.lower() in _MISSING:
        return None
    try:
        return int(t, 0)
    except ValueError:
        raise _RowError(f"{column} {text!r} is not an integer") from None


def _cell_pair(column: str, text: str) -> tuple[float | None, float | None]:
    """'(a, b)' as the probe writes NVML structs (util: gpu, memory; memory: used, total bytes)."""
    t = text.strip()
    if t.lower() in _MISSING:
        return None, None
    parts = t.strip("()").split(",")
    if len(parts) != 2:
        raise _RowError(f"{column} {text!r} is not a pair '(a, b)'")
    return _cell_float(column, parts[0]), _cell_float(column, parts[1])


class CsvReplaySource:
    """Replays a logged trace: the plan's CSV, our Sample CSV, or the NVML probe trace.

    Formats, told apart by the header:
    - ``plan``: ``timestamp,temperature_c,power_w,utilization_pct,memory_used_mb,memory_total_mb``
      (the seed's bash logger; timestamps from ``date -Iseconds``).
    - ``samples``: ``timestamp`` plus any of Sample's field names (``device``, ``throttle_mask``,
      ``throttle_reasons`` as ``a|b`` ...); what :func:`write_samples_csv` writes.
    - ``probe``: the NVML probe trace (``t_s,temperature,power_mw,energy_mj,util,memory,sm_clock,
      clocks_event_reasons``): t_s are seconds after ``base_time`` (default the Unix epoch),
      power in mW, memory in bytes, util/memory as ``(a, b)`` pairs.
    Required columns: a timestamp (``timestamp`` or ``t_s``) and a temperature
    (``temperature_c`` or ``temperature``); without them the constructor raises
    :class:`TelemetryError` naming the missing ones. Timestamps: ISO 8601 (naive = UTC)
    or Unix epoch seconds.

    Bad rows never stop a replay. A row that cannot be parsed (wrong number of cells,
    a timestamp or any number that does not parse, a temperature outside -50..200 C) is
    skipped and reported in ``problems`` as ``"line N: reason"``. Empty / ``N/A`` cells
    are None, not problems. A row whose timestamp is not after the previous kept row of
    the same device (out of order or duplicate) is DROPPED and reported: the policy needs
    time order, and a log that jumps back is a clock step or a concatenation mistake.

    ``samples()`` returns every kept row, in file order. ``sample()`` returns the next
    row on each call ([] once exhausted), starting at ``start_index`` (an index into
    ``samples()``); ``position`` is the index of the next row (what a sensor cursor keeps).
    With ``restamp=True`` rows returned by ``sample()`` carry ``clock()`` instead of their
    own time (a live demo of an old trace); ``samples()`` always keeps the file's times.
    """

    name = "csv"

    def __init__(
        self,
        path: str | Path,
        device: str = "gpu0",
        *,
        start_index: int = 0,
        base_time: datetime | None = None,
        restamp: bool = False,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.path = Path(path)
        self.device = device
        self.base_time = as_utc(base_time) if base_time is not None else EPOCH
        self.restamp = restamp
        self._clock = clock
        self.problems: list[str] = []
        try:
            with self.path.open(newline="", encoding="utf-8", errors="replace") as fh:
                rows = self._read_rows(fh)
        except OSError as exc:
            raise TelemetryError(f"cannot read trace {self.path}: {exc}") from exc
        self._samples = self._parse(rows)
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.position = min(start_index, len(self._samples))

    def _read_rows(self, fh: Any) -> list[tuple[int, list[str]]]:
        """(physical line number, cells); a line the csv module rejects is a problem, not a stop."""
        reader = csv.reader(fh)
        rows: list[tuple[int, list[str]]] = []
        start = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return rows
            except csv.Error as exc:
                self.problems.append(f"line {reader.line_num}: unreadable ({exc}); skipped")
            else:
                rows.append((start, row))
            start = reader.line_num + 1

    # the header decides the format
    def _parse(self, rows: list[tuple[int, list[str]]]) -> list[Sample]:
        first = next((i for i, (_, r) in enumerate(rows) if any(c.strip() for c in r)), None)
        if first is None:
            raise TelemetryError(f"trace {self.path} is empty: no header")
        header = [c.strip().lower() for c in rows[first][1]]
        columns = set(header)
        if "t_s" in columns or ("temperature" in columns and "temperature_c" not in columns):
            self.format = "probe"
            required = ("t_s|timestamp", "temperature")
        else:
            self.format = "plan" if tuple(header) == PLAN_COLUMNS else "samples"
            required = ("timestamp", "temperature_c")
        missing = [r for r in required if not any(alt in columns for alt in r.split("|"))]
        if missing:
            raise TelemetryError(
                f"trace {self.path} lacks required column(s) {', '.join(missing)} (header: {','.join(header)})"
            )
        index = {name: i for i, name in enumerate(header)}
        out: list[Sample] = []
        last: dict[str, datetime] = {}
        for lineno, row in rows[first + 1 :]:
            if not any(c.strip() for c in row):
                continue  # blank line
            if len(row) != len(header):
                self.problems.append(f"line {lineno}: {len(row)} cells, header has {len(header)}; skipped")
                continue
            try:
                cells = {name: row[i] for name, i in index.items()}
                sample = self._probe_row(cells) if self.format == "probe" else self._named_row(cells)
            except (_RowError, ValueError) as exc:
                self.problems.append(f"line {lineno}: {exc}; skipped")
                continue
            previous = last.get(sample.device)
            if previous is not None and sample.ts <= previous:
                what = "duplicate" if sample.ts == previous else "out of order"
                self.problems.append(
                    f"line {lineno}: timestamp {sample.ts.isoformat()} {what} "
                    f"(previous {previous.isoformat()}); dropped"
                )
                continue
            last[sample.device] = sample.ts
            out.append(sample)
        return out

    def _timestamp(self, cells: dict[str, str]) -> datetime:
        if "t_s" in cells:
            seconds = _cell_float("t_s", cells["t_s"])
            if seconds is None:
                raise _RowError("t_s is empty")
            return self.base_time + timedelta(seconds=seconds)
        try:
            return parse_timestamp(cells["timestamp"])
        except (ValueError, OverflowError, OSError) as exc:
            raise _RowError(f"timestamp {cells['timestamp']!r} does not parse ({exc})") from None

    @staticmethod
    def _check_temperature(value: float | None) -> float | None:
        if value is not None and not -50 < value < 200:
            raise _RowError(f"temperature {value} C is outside -50..200")
        return value

    def _named_row(self, cells: dict[str, str]) -> Sample:
        values: dict[str, Any] = {}
        for name, text in cells.items():
            if name in _FLOAT_FIELDS:
                values[name] = _cell_float(name, text)
        values["temperature_c"] = self._check_temperature(values.get("temperature_c"))
        mask = _cell_int("throttle_mask", cells["throttle_mask"]) if "throttle_mask" in cells else None
        reasons: tuple[str, ...] = ()
        if cells.get("throttle_reasons", "").strip():
            reasons = tuple(r.strip() for r in cells["throttle_reasons"].split("|") if r.strip())
        elif mask is not None:
            reasons = decode_clocks_event_reasons(mask)
        return Sample(
            ts=self._timestamp(cells),
            device=(cells.get("device") or "").strip() or self.device,
            source="csv",
            throttle_reasons=reasons,
            throttle_mask=mask,
            **values,
        )

    def _probe_row(self, cells: dict[str, str]) -> Sample:
        util, _mem_util = _cell_pair("util", cells["util"]) if "util" in cells else (None, None)
        used, total = _cell_pair("memory", cells["memory"]) if "memory" in cells else (None, None)
        mask = (
            _cell_int("clocks_event_reasons", cells["clocks_event_reasons"])
            if "clocks_event_reasons" in cells
            else None
        )
        power_mw = _cell_float("power_mw", cells["power_mw"]) if "power_mw" in cells else None

        def opt(name: str) -> float | None:
            return _cell_float(name, cells[name]) if name in cells else None

        return Sample(
            ts=self._timestamp(cells),
            device=(cells.get("device") or "").strip() or self.device,
            source="csv",
            temperature_c=self._check_temperature(_cell_float("temperature", cells["temperature"])),
            power_w=None if power_mw is None else power_mw / 1000.0,
            energy_mj=opt("energy_mj"),
            utilization_pct=util,
            memory_used_mb=None if used is None else used / MIB,
            memory_total_mb=None if total is None else total / MIB,
            sm_clock_mhz=opt("sm_clock"),
            mem_clock_mhz=opt("mem_clock"),
            throttle_reasons=decode_clocks_event_reasons(mask),
            throttle_mask=mask,
        )

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def exhausted(self) -> bool:
        return self.position >= len(self._samples)

    def sample(self) -> list[Sample]:
        if self.exhausted:
            return []
        s = self._samples[self.position]
        self.position += 1
        return [replace(s, ts=self._clock()) if self.restamp else s]

    def thresholds(self) -> list[DriverThresholds]:
        return []

    def close(self) -> None:
        pass


def write_samples_csv(samples: Iterable[Sample], path: str | Path) -> Path:
    """Write samples in the ``samples`` CSV format (CsvReplaySource reads it back losslessly)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(SAMPLE_CSV_COLUMNS)
        for s in samples:
            d = s.to_dict()
            row = []
            for col in SAMPLE_CSV_COLUMNS:
                if col == "timestamp":
                    row.append(d["ts"])
                elif col == "throttle_reasons":
                    row.append("|".join(d["throttle_reasons"]))
                else:
                    v = d[col]
                    row.append("" if v is None else repr(v) if isinstance(v, float) else str(v))
            w.writerow(row)
    return path


# -- opening ---------------------------------------------------------------------------------


def open_sources(
    enable_nvml: bool = True,
    enable_hwmon: bool = True,
    replay_csv: Path | None = None,
    *,
    replay_device: str = "gpu0",
    replay_start_index: int = 0,
    replay_base_time: datetime | None = None,
    replay_restamp: bool = False,
    clock: Callable[[], datetime] = utc_now,
    nvml: Any = None,
) -> tuple[list[TelemetrySource], list[str]]:
    """Open what this machine has. Returns (sources that opened, reasons for those that did not).

    ``replay_csv`` replaces NVML (test/demo mode). Never raises for a missing device or
    sensor: each becomes a line such as ``"nvml: no NVIDIA device: NVML Shared Library Not Found"``.
    """
    sources: list[TelemetrySource] = []
    skipped: list[str] = []
    if replay_csv is not None:
        try:
            sources.append(
                CsvReplaySource(
                    replay_csv,
                    replay_device,
                    start_index=replay_start_index,
                    base_time=replay_base_time,
                    restamp=replay_restamp,
                    clock=clock,
                )
            )
        except (TelemetryError, ValueError) as exc:
            skipped.append(f"csv: {exc}")
    elif enable_nvml:
        try:
            sources.append(NvmlSource(nvml=nvml, clock=clock))
        except TelemetryError as exc:
            skipped.append(f"nvml: {exc}")
    else:
        skipped.append("nvml: disabled")
    if enable_hwmon:
        hwmon = HwmonSource(clock=clock)
        if hwmon.sample():
            sources.append(hwmon)
        else:
            detail = f" ({hwmon.last_error})" if hwmon.last_error else ""
            skipped.append(f"hwmon: no CPU temperature sensor{detail}")
    else:
        skipped.append("hwmon: disabled")
    return sources, skipped


def sample_all(sources: Sequence[TelemetrySource]) -> tuple[list[Sample], list[str]]:
    """Sample every source; a source that raises TelemetryError becomes an error line, not a crash."""
    samples: list[Sample] = []
    errors: list[str] = []
    for source in sources:
        try:
            samples.extend(source.sample())
        except TelemetryError as exc:
            errors.append(f"{source.name}: {exc}")
    return samples, errors


__all__ = [
    "CLOCKS_EVENT_REASONS",
    "CsvReplaySource",
    "DriverThresholds",
    "HwmonSource",
    "NoDevice",
    "NvmlSource",
    "PLAN_COLUMNS",
    "PROBE_COLUMNS",
    "SAMPLE_CSV_COLUMNS",
    "Sample",
    "THERMAL_REASONS",
    "TelemetryError",
    "TelemetrySource",
    "cpu_samples_from_sensors",
    "decode_clocks_event_reasons",
    "open_sources",
    "parse_timestamp",
    "read_nvml_sample",
    "read_nvml_thresholds",
    "sample_all",
    "write_samples_csv",
]
