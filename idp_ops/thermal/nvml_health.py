"""NVML reads for GPU health (issue 13): XID events, ECC counts, retired pages, remapped rows,
memory temperature, PCIe replays, power limit against the default.

Plain Python (stdlib only, ``nvml`` is the pynvml module or the stand-in): the NVML benchmarks
import it with nothing but nvidia-ml-py. Every read goes through telemetry's FieldReader
(``reader.read(name, fn, *args)``), so NotSupported is remembered per device and gives None,
exactly like the thermal fields. The names used with the reader are the ``*_FIELD`` constants
below; they are what ``NvmlSource.unsupported_fields`` lists.
"""

from __future__ import annotations

from typing import Any

# Reader names (what unsupported_fields lists).
ECC_FIELDS = {
    # Sample field: (pynvml memory error type, counter type, default values of the constants)
    "ecc_volatile_corrected": ("NVML_MEMORY_ERROR_TYPE_CORRECTED", 0, "NVML_VOLATILE_ECC", 0),
    "ecc_volatile_uncorrected": ("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1, "NVML_VOLATILE_ECC", 0),
    "ecc_aggregate_corrected": ("NVML_MEMORY_ERROR_TYPE_CORRECTED", 0, "NVML_AGGREGATE_ECC", 1),
    "ecc_aggregate_uncorrected": ("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1, "NVML_AGGREGATE_ECC", 1),
}
RETIRED_FIELDS = {
    "retired_pages_sbe": ("NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS", 0),
    "retired_pages_dbe": ("NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR", 1),
}
XID_FIELD = "xid_events"
# One poll drains at most this many events; the rest come with the next sample.
MAX_EVENTS_PER_POLL = 64
_XID_CRITICAL = 0x8  # nvmlEventTypeXidCriticalError
_SUCCESS, _NOT_SUPPORTED, _TIMEOUT, _FUNCTION_NOT_FOUND = 0, 3, 10, 13


def _code(nvml: Any, name: str, default: int) -> int:
    return getattr(nvml, name, default)


def _error_class(nvml: Any) -> type[BaseException]:
    return getattr(nvml, "NVMLError", Exception)


def _is(nvml: Any, exc: BaseException, name: str, default: int) -> bool:
    return getattr(exc, "value", None) == _code(nvml, name, default)


# -- field values (one call for several NVML_FI_* ids) ---------------------------------------


def field_value(nvml: Any, fv: Any) -> float | None:
    """One ``c_nvmlFieldValue_t`` -> number, None if its own return code is not success."""
    if getattr(fv, "nvmlReturn", 0) != _code(nvml, "NVML_SUCCESS", _SUCCESS):
        return None
    member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}.get(
        int(getattr(fv, "valueType", 1)), "uiVal"
    )
    return float(getattr(fv.value, member))


def read_field_values(reader: Any, handle: Any, wanted: dict[str, str]) -> dict[str, float | None]:
    """``{reader name: NVML_FI_* constant name}`` -> values, in ONE nvmlDeviceGetFieldValues call.

    A field whose own return code is not success is NotSupported on this card: remembered
    under its name and not asked again. A binding without the constant is the same.
    """
    nvml = reader.nvml
    out: dict[str, float | None] = dict.fromkeys(wanted)
    ids: dict[str, int] = {}
    for name, const in wanted.items():
        if name in reader.unsupported:
            continue
        field_id = getattr(nvml, const, None)
        if field_id is None:
            reader.unsupported.add(name)
        else:
            ids[name] = field_id
    if not ids:
        return out
    key = "+".join(ids)
    values = reader.read(key, getattr(nvml, "nvmlDeviceGetFieldValues", None), handle, list(ids.values()))
    if key in reader.unsupported:  # the call itself is not supported: none of its fields are
        reader.unsupported.discard(key)
        reader.unsupported.update(ids)
    if key in reader.errors:
        reader.errors.update(dict.fromkeys(ids, reader.errors.pop(key)))
    if values is None:
        return out
    for name, fv in zip(ids, values, strict=False):
        value = field_value(nvml, fv)
        if value is None:
            reader.unsupported.add(name)
        out[name] = value
    return out


# -- counters and states ----------------------------------------------------------------------


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def read_health(reader: Any, handle: Any, cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """ECC counts, retired pages, remapped rows, PCIe replays and power limits as Sample kwargs.

    ``cache`` (per device, kept by the source) holds what cannot change while the driver runs:
    the default power limit is read once.
    """
    nvml = reader.nvml
    out: dict[str, Any] = {}
    ecc = getattr(nvml, "nvmlDeviceGetTotalEccErrors", None)
    for name, (etype, edefault, ctype, cdefault) in ECC_FIELDS.items():
        out[name] = _int(reader.read(name, ecc, handle, _code(nvml, etype, edefault), _code(nvml, ctype, cdefault)))
    retired = getattr(nvml, "nvmlDeviceGetRetiredPages", None)
    for name, (cause, default) in RETIRED_FIELDS.items():
        pages = reader.read(name, retired, handle, _code(nvml, cause, default))
        out[name] = None if pages is None else len(pages)
    pending = reader.read(
        "retired_pages_pending", getattr(nvml, "nvmlDeviceGetRetiredPagesPendingStatus", None), handle
    )
    out["retired_pages_pending"] = None if pending is None else bool(pending)
    rows = reader.read("remapped_rows", getattr(nvml, "nvmlDeviceGetRemappedRows", None), handle)
    corr, unc, remap_pending, failure = rows if rows is not None else (None, None, None, None)
    out["remapped_rows_correctable"] = _int(corr)
    out["remapped_rows_uncorrectable"] = _int(unc)
    out["remap_pending"] = None if remap_pending is None else bool(remap_pending)
    out["remap_failure"] = None if failure is None else bool(failure)
    out["pcie_replay_count"] = _int(
        reader.read("pcie_replay", getattr(nvml, "nvmlDeviceGetPcieReplayCounter", None), handle)
    )
    limit = reader.read("power_limit", getattr(nvml, "nvmlDeviceGetEnforcedPowerLimit", None), handle)
    out["power_limit_w"] = None if limit is None else limit / 1000.0
    cache = cache if cache is not None else {}
    if "power_default_limit_w" in cache:
        out["power_default_limit_w"] = cache["power_default_limit_w"]
    else:
        default = reader.read(
            "power_default_limit", getattr(nvml, "nvmlDeviceGetPowerManagementDefaultLimit", None), handle
        )
        out["power_default_limit_w"] = None if default is None else default / 1000.0
        if default is not None:  # a transient failure is asked again next sample
            cache["power_default_limit_w"] = out["power_default_limit_w"]
    return out


# -- XID events -------------------------------------------------------------------------------


class XidWatch:
    """An NVML event set for one device's critical XIDs, drained on every sample.

    ``status`` says what registration gave: "registered", "not supported" (the card or the
    driver has no XID events: samples carry ``xid_errors=None``) or "failed: <error>".
    """

    def __init__(self, nvml: Any, handle: Any, device: str):
        self.nvml = nvml
        self.device = device
        self._set: Any = None
        self._pending: list[int] = []
        error = _error_class(nvml)
        create = getattr(nvml, "nvmlEventSetCreate", None)
        register = getattr(nvml, "nvmlDeviceRegisterEvents", None)
        if create is None or register is None or getattr(nvml, "nvmlEventSetWait_v2", None) is None:
            self.status = "not supported: this pynvml has no event sets"
            return
        try:
            self._set = create()
        except error as exc:
            self.status = self._why(exc)
            return
        try:
            register(handle, getattr(nvml, "nvmlEventTypeXidCriticalError", _XID_CRITICAL), self._set)
        except error as exc:
            self.status = self._why(exc)
            self.close()
            return
        self.status = "registered"

    def _why(self, exc: BaseException) -> str:
        if _is(self.nvml, exc, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED) or _is(
            self.nvml, exc, "NVML_ERROR_FUNCTION_NOT_FOUND", _FUNCTION_NOT_FOUND
        ):
            return "not supported"
        return f"failed: {exc}"

    @property
    def watching(self) -> bool:
        return self._set is not None

    def _drain(self) -> list[int]:
        error = _error_class(self.nvml)
        wait = self.nvml.nvmlEventSetWait_v2
        for _ in range(MAX_EVENTS_PER_POLL):
            try:
                data = wait(self._set, 0)  # 0 ms: never blocks the tick
            except error as exc:
                if _is(self.nvml, exc, "NVML_ERROR_TIMEOUT", _TIMEOUT):
                    break  # no (more) event waiting
                raise
            if int(getattr(data, "eventType", _XID_CRITICAL)) & _XID_CRITICAL:
                self._pending.append(int(data.eventData))
        return self._pending

    def poll(self, reader: Any) -> tuple[int, ...] | None:
        """XIDs since the last poll (in order); None when not watching. Errors go through the
        reader (a lost GPU raises TelemetryError there); events drained before an error are
        kept and returned by the next successful poll."""
        if not self.watching or XID_FIELD in reader.unsupported:
            return None
        if reader.read(XID_FIELD, self._drain) is None:
            return None  # unknown this time (kept events come with the next poll)
        events, self._pending = tuple(self._pending), []
        return events

    def close(self) -> None:
        if self._set is not None:
            event_set, self._set = self._set, None
            free = getattr(self.nvml, "nvmlEventSetFree", None)
            if free is not None:
                try:
                    free(event_set)
                except _error_class(self.nvml):
                    pass  # the driver is gone already; nothing left to free


__all__ = [
    "ECC_FIELDS",
    "MAX_EVENTS_PER_POLL",
    "RETIRED_FIELDS",
    "XID_FIELD",
    "XidWatch",
    "field_value",
    "read_field_values",
    "read_health",
]
