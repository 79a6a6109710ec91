"""Telemetry sources: NVML (GPU) and hwmon via psutil (CPU); the CSV replay is in replay.py,
the Sample and threshold types in samples.py (re-exported here).

Plain Python, no Dagster. Every source answers ``sample()`` with one :class:`Sample`
per device, stamped in UTC, and ``thresholds()`` with the driver's own temperature
limits where it knows them.

NVML facts this module rests on (measured on an H200, ``idp_ops_tests/fixtures/h200_nvml_report.json``):
``nvmlInit`` costs ~9 ms (done once per source), the seed's five fields ~12 us together,
``nvmlDeviceGetTotalEnergyConsumption`` ~4 ms (read at most once a minute, power integrated
in between: energy.py), and a
NotSupported answer (fan speed on a passive card) costs ~140 us: a field that answered
NotSupported once is remembered per device and not asked again. GPU health fields (XIDs, ECC,
retired pages, remapped rows, memory temperature, PCIe replays, power limits): nvml_health.py.

Units: temperatures in degrees C, power in W, energy in mJ (NVML's cumulative counter),
memory in MiB (what ``nvidia-smi`` prints as "MiB"; the field names keep the plan's ``_mb``),
clocks in MHz.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from idp_ops.thermal.energy import COUNTER, DEFAULT_INTERVAL_S, EnergyIntegrator
from idp_ops.thermal.nvml_health import XidWatch, read_field_values, read_health
from idp_ops.thermal.nvml_health import field_value as _field_value  # noqa: F401  (kept importable here)

# The data types and the CSV replay live in their own modules; callers keep importing them from here.
from idp_ops.thermal.replay import (
    PLAN_COLUMNS,
    PROBE_COLUMNS,
    SAMPLE_CSV_COLUMNS,
    CsvReplaySource,
    write_samples_csv,
)
from idp_ops.thermal.samples import (  # noqa: F401
    CLOCKS_EVENT_REASONS,
    MIB,
    THERMAL_REASONS,
    DriverThresholds,
    NoDevice,
    Sample,
    TelemetryError,
    TelemetrySource,
    as_utc,
    decode_clocks_event_reasons,
    parse_timestamp,
    utc_now,
)

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
    energy: EnergyIntegrator | None = None,
    monotonic_s: float | None = None,
    xid: XidWatch | None = None,
    cache: dict[str, Any] | None = None,
    health: bool = True,
) -> Sample:
    """One Sample of every field from one NVML device handle.

    ``nvml`` is the ``pynvml`` module (or anything with its names). Each field is one
    call. The energy counter is the expensive one (~4 ms): without ``energy`` it is read
    exactly once per sample; with an :class:`EnergyIntegrator` only when it is due (at most
    once per its interval, at ``monotonic_s``), the power integrated in between.
    ``xid`` drains the device's XID events; ``health`` reads ECC, retired pages, remapped
    rows, PCIe replays and power limits (``cache``: per-device constants).
    """
    r = FieldReader(nvml, device, unsupported)
    temperature = r.read("temperature", nvml.nvmlDeviceGetTemperature, handle, _code(nvml, "NVML_TEMPERATURE_GPU", 0))
    power_mw = r.read("power", nvml.nvmlDeviceGetPowerUsage, handle)
    # One field-values call for both (~4 us a call on the H200); a field whose own return
    # code says no is NotSupported on this card.
    fields = {"power_instant": "NVML_FI_DEV_POWER_INSTANT"}
    if health:
        fields["memory_temperature"] = "NVML_FI_DEV_MEMORY_TEMP"
    values = read_field_values(r, handle, fields)
    instant_mw = values.get("power_instant")
    instant_w = None if instant_mw is None else instant_mw / 1000.0
    energy_mj, energy_source = None, None
    if read_energy and energy is None:
        energy_mj = _number(r.read("energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle))
        energy_source = None if energy_mj is None else COUNTER
    elif read_energy and "energy" not in r.unsupported:
        t = time.monotonic() if monotonic_s is None else monotonic_s
        power_w = _number(power_mw, 1000.0)
        if energy.counter_due(t, power_w):
            counter = _number(r.read("energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle))
            energy_mj, energy_source = energy.from_counter(t, counter, power_w)
        else:
            assert power_w is not None  # counter_due is True without a power reading
            energy_mj, energy_source = energy.integrate(t, power_w)
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
        energy_mj=energy_mj,
        utilization_pct=_number(getattr(util, "gpu", None)),
        memory_used_mb=_number(getattr(memory, "used", None), MIB),
        memory_total_mb=_number(getattr(memory, "total", None), MIB),
        sm_clock_mhz=_number(sm_clock),
        mem_clock_mhz=_number(mem_clock),
        throttle_reasons=decode_clocks_event_reasons(mask),
        throttle_mask=mask,
        fan_speed_pct=_number(fan),
        energy_source=energy_source,
        memory_temperature_c=values.get("memory_temperature"),
        xid_errors=xid.poll(r) if xid is not None else None,
        **(read_health(r, handle, cache) if health else {}),
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

    The energy counter is read at most once per ``energy_read_interval_s`` per device (0: every
    sample), the power integrated in between (``Sample.energy_source`` says which);
    ``monotonic`` times that. ``watch_xid`` registers an NVML event set per device for critical
    XIDs (``xid_registration`` says what each registration gave) and drains it every sample.
    """

    name = "nvml"

    def __init__(
        self,
        *,
        nvml: Any = None,
        clock: Callable[[], datetime] = utc_now,
        read_energy: bool = True,
        read_fan: bool = True,
        energy_read_interval_s: float = DEFAULT_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
        watch_xid: bool = True,
        health: bool = True,
    ):
        self._nvml = nvml if nvml is not None else _import_pynvml()
        self._clock = clock
        self._monotonic = monotonic
        self._read_energy = read_energy
        self._read_fan = read_fan
        self._health = health
        self._energy_read_interval_s = float(energy_read_interval_s)
        self._open = False
        self._xid: dict[str, XidWatch] = {}
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
            self._energy = {d: EnergyIntegrator(self._energy_read_interval_s) for d in self.devices}
            self._cache: dict[str, dict[str, Any]] = {d: {} for d in self.devices}
            if watch_xid:
                self._xid = {d: XidWatch(nv, h, d) for d, h in zip(self.devices, self._handles, strict=True)}
        except error as exc:
            self.close()
            if is_driver_gone(nv, exc):
                raise TelemetryError(f"NVIDIA driver gone: {exc}") from exc
            raise TelemetryError(f"NVML unavailable: {exc}") from exc
        except BaseException:
            self.close()
            raise

    @property
    def energy_read_interval_s(self) -> float:
        return self._energy_read_interval_s

    @energy_read_interval_s.setter
    def energy_read_interval_s(self, seconds: float) -> None:
        """Change the counter cadence (the settings can change while the source stays open)."""
        seconds = float(seconds)
        if seconds != self._energy_read_interval_s:
            EnergyIntegrator(seconds)  # validates
            self._energy_read_interval_s = seconds
            for integrator in self._energy.values():
                integrator.interval_s = seconds

    @property
    def xid_registration(self) -> dict[str, str]:
        """Per device: "registered", "not supported", "failed: ..." or "not watched"."""
        return {d: (self._xid[d].status if d in self._xid else "not watched") for d in self.devices}

    @property
    def energy_counter_reads(self) -> dict[str, int]:
        return {d: e.counter_reads for d, e in self._energy.items()}

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
                        energy=self._energy[device] if self._energy_read_interval_s > 0 else None,
                        monotonic_s=self._monotonic(),
                        xid=self._xid.get(device),
                        cache=self._cache[device],
                        health=self._health,
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
            for watch in self._xid.values():
                watch.close()  # before nvmlShutdown: the event sets belong to this session
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
    energy_read_interval_s: float = DEFAULT_INTERVAL_S,
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
            sources.append(NvmlSource(nvml=nvml, clock=clock, energy_read_interval_s=energy_read_interval_s))
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
