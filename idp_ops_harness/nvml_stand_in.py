"""A stand-in for the pynvml module that answers with the numbers recorded on a real H200.

It uses the real pynvml constants, exception classes and result structures; only the calls
into the driver are replaced. The values come from fixtures/h200_nvml_report.json.

GPU health (issue 13): ECC counts, retired pages, remapped rows, PCIe replays, the default
power limit and XID event sets answer too. Where the report has no recorded value the stand-in
answers as a healthy Hopper card is documented to: zero counts, no remap pending, page
retirement NotSupported (Ampere and later remap rows instead). Tests change them with
``ecc``, ``remapped``, ``retired_pending`` ... and inject XIDs with :meth:`inject_xid`.
"""

from __future__ import annotations

import json
import types

import pynvml

from idp_ops_harness.recorded_data import FIXTURES

REPORT = json.loads((FIXTURES / "h200_nvml_report.json").read_text())


def _report_int(key: str) -> int:
    return int(REPORT["support"][key])


def _report_pair(key: str) -> tuple[int, int]:
    a, b = REPORT["support"][key].strip("()").split(",")
    return int(a), int(b)


class StandInNvml(types.SimpleNamespace):
    """The parts of pynvml our source calls, answering with the H200's recorded values.

    Constants, exception classes and result structures are the real pynvml ones; only the
    calls into the driver are replaced. ``fail`` maps a function name to an NVML error code
    it raises; ``calls`` counts calls per function.
    """

    def __init__(self, *, devices: int = 1, fail: dict[str, int] | None = None, drop: tuple[str, ...] = ()):
        super().__init__()
        for name in dir(pynvml):
            if name.startswith(("NVML_", "NVMLError")):
                setattr(self, name, getattr(pynvml, name))
        self.devices = devices
        self.fail = dict(fail or {})
        self.calls: dict[str, int] = {}
        self.temperature = _report_int("temperature")
        self.power_mw = _report_int("power_mw")
        self.energy_mj = _report_int("energy_mj")
        self.mask = _report_int("clocks_event_reasons")
        self.instant = json.loads(REPORT["support"]["NVML_FI_DEV_POWER_INSTANT"].replace("'", '"'))
        self.memory_temp = json.loads(REPORT["support"]["NVML_FI_DEV_MEMORY_TEMP"].replace("'", '"'))
        self.power_limit_mw = _report_int("power_limit_mw")
        self.default_limit_mw = _report_int("power_limit_mw")
        # (error type, counter type) -> count, as nvmlDeviceGetTotalEccErrors answers.
        self.ecc = {
            (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC): 0,
            (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC): 0,
            (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC): 0,
            (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC): 0,
        }
        self.remapped = [0, 0, 0, 0]  # correctable, uncorrectable, pending, failure
        self.retired_pages: dict[int, list[int]] | None = None  # None: NotSupported (Hopper)
        self.retired_pending: int | None = None
        self.pcie_replays = 0
        self.xid_queue: dict[int, list[int]] = {i: [] for i in range(devices)}
        self._event_sets: dict[int, int] = {}  # event set id -> device index
        self.freed_sets: list[int] = []
        for name in self._functions():
            if name not in drop:
                setattr(self, name, self._wrap(name))

    @staticmethod
    def _functions() -> list[str]:
        return [
            "nvmlInit",
            "nvmlShutdown",
            "nvmlDeviceGetCount",
            "nvmlDeviceGetHandleByIndex",
            "nvmlSystemGetDriverVersion",
            "nvmlDeviceGetName",
            "nvmlDeviceGetTemperature",
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetFieldValues",
            "nvmlDeviceGetTotalEnergyConsumption",
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetMemoryInfo",
            "nvmlDeviceGetClockInfo",
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
            "nvmlDeviceGetFanSpeed",
            "nvmlDeviceGetTemperatureThreshold",
            "nvmlDeviceGetEnforcedPowerLimit",
            "nvmlDeviceGetPowerManagementDefaultLimit",
            "nvmlDeviceGetTotalEccErrors",
            "nvmlDeviceGetRetiredPages",
            "nvmlDeviceGetRetiredPagesPendingStatus",
            "nvmlDeviceGetRemappedRows",
            "nvmlDeviceGetPcieReplayCounter",
            "nvmlEventSetCreate",
            "nvmlDeviceRegisterEvents",
            "nvmlEventSetWait_v2",
            "nvmlEventSetFree",
        ]

    # -- what a test injects -------------------------------------------------------------
    def inject_xid(self, xid: int, device: int = 0, times: int = 1) -> None:
        """The driver reports XID ``xid`` on ``device`` (what a registered event set delivers)."""
        self.xid_queue[device].extend([xid] * times)

    def _wrap(self, name: str):
        impl = getattr(self, "_" + name)

        def call(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in self.fail:
                raise pynvml.NVMLError(self.fail[name])
            return impl(*args)

        return call

    # -- answers (H200 values from the fixture report) ---------------------------------
    def _nvmlInit(self):
        return None

    def _nvmlShutdown(self):
        return None

    def _nvmlDeviceGetCount(self):
        return self.devices

    def _nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def _nvmlSystemGetDriverVersion(self):
        return REPORT["driver"]

    def _nvmlDeviceGetName(self, handle):
        return REPORT["name"]

    def _nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self.temperature

    def _nvmlDeviceGetPowerUsage(self, handle):
        return self.power_mw

    def _nvmlDeviceGetFieldValues(self, handle, field_ids):
        recorded = {pynvml.NVML_FI_DEV_POWER_INSTANT: self.instant, pynvml.NVML_FI_DEV_MEMORY_TEMP: self.memory_temp}
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for value, field_id in zip(values, field_ids, strict=True):
            answer = recorded.get(field_id, {"ret": pynvml.NVML_ERROR_NOT_SUPPORTED, "type": 1, "ui": 0})
            value.fieldId = field_id
            value.nvmlReturn = answer["ret"]
            value.valueType = answer["type"]
            value.value.uiVal = answer["ui"]
        return values

    def _nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self.energy_mj

    def _nvmlDeviceGetUtilizationRates(self, handle):
        gpu, mem = _report_pair("util")
        return pynvml.c_nvmlUtilization_t(gpu=gpu, memory=mem)

    def _nvmlDeviceGetMemoryInfo(self, handle):
        used, total = _report_pair("memory")
        return pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)

    def _nvmlDeviceGetClockInfo(self, handle, clock):
        return {pynvml.NVML_CLOCK_SM: _report_int("sm_clock"), pynvml.NVML_CLOCK_MEM: _report_int("mem_clock")}[clock]

    def _nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self.mask

    def _nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        return self.mask

    def _nvmlDeviceGetFanSpeed(self, handle):
        # "fan": "NVMLError: Not Supported" on the passive H200
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def _nvmlDeviceGetTemperatureThreshold(self, handle, kind):
        return {
            pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: _report_int("threshold_shutdown"),
            pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: _report_int("threshold_slowdown"),
            pynvml.NVML_TEMPERATURE_THRESHOLD_MEM_MAX: _report_int("threshold_mem_max"),
            pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX: _report_int("threshold_gpu_max"),
        }[kind]

    def _nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self.power_limit_mw

    def _nvmlDeviceGetPowerManagementDefaultLimit(self, handle):
        return self.default_limit_mw

    def _nvmlDeviceGetTotalEccErrors(self, handle, error_type, counter_type):
        return self.ecc[(error_type, counter_type)]

    def _nvmlDeviceGetRetiredPages(self, handle, cause):
        if self.retired_pages is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return list(self.retired_pages.get(cause, []))

    def _nvmlDeviceGetRetiredPagesPendingStatus(self, handle):
        if self.retired_pending is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.retired_pending

    def _nvmlDeviceGetRemappedRows(self, handle):
        return tuple(self.remapped)

    def _nvmlDeviceGetPcieReplayCounter(self, handle):
        return self.pcie_replays

    def _nvmlEventSetCreate(self):
        event_set = len(self._event_sets) + len(self.freed_sets) + 1
        self._event_sets[event_set] = -1
        return event_set

    def _nvmlDeviceRegisterEvents(self, handle, event_types, event_set):
        assert event_types & pynvml.nvmlEventTypeXidCriticalError
        self._event_sets[event_set] = handle[1]

    def _nvmlEventSetWait_v2(self, event_set, timeout_ms):
        queue = self.xid_queue.get(self._event_sets[event_set], [])
        if not queue:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)  # what NVML answers when nothing waits
        data = pynvml.c_nvmlEventData_t()
        data.eventType = pynvml.nvmlEventTypeXidCriticalError
        data.eventData = queue.pop(0)
        return data

    def _nvmlEventSetFree(self, event_set):
        del self._event_sets[event_set]
        self.freed_sets.append(event_set)
