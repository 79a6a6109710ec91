"""A stand-in for the pynvml module that answers with the numbers recorded on a real H200.

It uses the real pynvml constants, exception classes and result structures; only the calls
into the driver are replaced. The values come from fixtures/h200_nvml_report.json.
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
        ]

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
        assert field_ids == [pynvml.NVML_FI_DEV_POWER_INSTANT]
        values = (pynvml.c_nvmlFieldValue_t * 1)()
        values[0].fieldId = field_ids[0]
        values[0].nvmlReturn = self.instant["ret"]
        values[0].valueType = self.instant["type"]
        values[0].value.uiVal = self.instant["ui"]
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
        return _report_int("power_limit_mw")
