"""Telemetry sources: CSV replay of real traces, NVML field decoding, hwmon, open_sources.

There is no GPU on the CI machines. The real pynvml is exercised for the no-device path;
the per-field reading code is driven by a small stand-in for the pynvml module
(support/nvml_stand_in.py) that
answers with the numbers recorded on a real H200 (h200_nvml_report.json) and raises the
real pynvml exception classes. That stand-in is the only fake in these tests.
"""

from __future__ import annotations

import ctypes
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pynvml
import pytest

from idp_ops.thermal.telemetry import (
    CLOCKS_EVENT_REASONS,
    MIB,
    CsvReplaySource,
    DriverThresholds,
    HwmonSource,
    NoDevice,
    NvmlSource,
    Sample,
    TelemetryError,
    TelemetrySource,
    cpu_samples_from_sensors,
    decode_clocks_event_reasons,
    open_sources,
    read_nvml_sample,
    read_nvml_thresholds,
    sample_all,
    write_samples_csv,
)
from idp_ops_harness.nvml_stand_in import REPORT, StandInNvml
from idp_ops_harness.recorded_data import FIXTURES

TRACE = FIXTURES / "h200_trace.csv"
BASE = datetime(2025, 6, 1, tzinfo=UTC)


def _nvml_gpu_present() -> bool:
    try:
        src = NvmlSource()
    except TelemetryError:
        return False
    src.close()
    return True


# -- CSV: the real H200 trace (probe format) -------------------------------------------------


def test_fixture_trace_reads_every_row_with_nvml_units_converted():
    src = CsvReplaySource(TRACE, base_time=BASE)
    assert src.format == "probe"
    assert src.problems == []
    rows = src.samples()
    assert len(rows) == REPORT["trace_rows"] == 99
    temps = [s.temperature_c for s in rows]
    assert (min(temps), max(temps)) == tuple(REPORT["trace_temp_min_max"]) == (35, 59)
    powers = [s.power_w for s in rows]
    assert (min(powers), max(powers)) == pytest.approx(tuple(REPORT["trace_power_w_min_max"]))

    first, loaded, idle_clocks = rows[0], rows[20], rows[19]
    # 0.0,36,81251,2404619,"(0, 0)","(644939776, 150754820096)",345,1
    assert first.ts == BASE
    assert first.device == "gpu0" and first.source == "csv"
    assert first.temperature_c == 36.0 and first.power_w == pytest.approx(81.251)
    assert first.energy_mj == 2404619
    assert first.utilization_pct == 0
    assert first.memory_used_mb == pytest.approx(644939776 / MIB)
    assert first.memory_total_mb == 143771.0  # what nvidia-smi printed on that card (MiB)
    assert first.sm_clock_mhz == 345 and first.mem_clock_mhz is None
    assert first.throttle_mask == 1 and first.throttle_reasons == ("gpu_idle",)
    # 20.6,56,629305,4559418,"(100, 25)","(1839071232, 150754820096)",1395,4
    assert loaded.ts == BASE + timedelta(seconds=20.6)
    assert loaded.temperature_c == 56 and loaded.power_w == pytest.approx(629.305)
    assert loaded.utilization_pct == 100
    assert loaded.throttle_mask == 4 and loaded.throttle_reasons == ("sw_power_cap",)
    assert idle_clocks.throttle_mask == 0 and idle_clocks.throttle_reasons == ()


def test_relative_times_default_to_the_epoch():
    first = CsvReplaySource(TRACE).samples()[1]
    assert first.ts == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)


def test_replay_cursor_returns_one_row_per_call_then_nothing():
    src = CsvReplaySource(TRACE, base_time=BASE, start_index=97)
    assert src.position == 97 and not src.exhausted
    (a,) = src.sample()
    (b,) = src.sample()
    assert a.ts == BASE + timedelta(seconds=97.95) and b.ts == BASE + timedelta(seconds=98.95)
    assert src.exhausted and src.position == 99
    assert src.sample() == [] and src.sample() == []
    # a cursor past the end is simply exhausted
    assert CsvReplaySource(TRACE, start_index=500).sample() == []
    with pytest.raises(ValueError, match="start_index must be >= 0, got -1"):
        CsvReplaySource(TRACE, start_index=-1)


def test_replay_restamp_puts_rows_at_the_clock_but_samples_keeps_file_times():
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    src = CsvReplaySource(TRACE, base_time=BASE, restamp=True, clock=lambda: now)
    (s,) = src.sample()
    assert s.ts == now and s.temperature_c == 36
    assert src.samples()[0].ts == BASE


def test_device_name_is_configurable():
    assert {s.device for s in CsvReplaySource(TRACE, device="gpu1").samples()} == {"gpu1"}


# -- CSV: the plan's format and ours ------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "log.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


PLAN_HEADER = "timestamp,temperature_c,power_w,utilization_pct,memory_used_mb,memory_total_mb\n"


def test_plan_format_as_the_seed_bash_logger_writes_it(tmp_path):
    # `echo "$(date -Iseconds),$(nvidia-smi ... --format=csv,noheader,nounits)"`: note the spaces.
    path = _write(
        tmp_path,
        PLAN_HEADER
        + "2025-06-01T10:00:00+02:00,36, 81.25, 0, 0, 143771\n"
        + "2025-06-01T10:00:30+02:00,58, 691.90, 100, 1754, 143771\n"
        + "2025-06-01T10:01:00+02:00,57, [N/A], 100, 1754, 143771\n",
    )
    src = CsvReplaySource(path)
    assert src.format == "plan" and src.problems == []
    a, b, c = src.samples()
    assert a.ts == datetime(2025, 6, 1, 8, 0, tzinfo=UTC)  # converted to UTC
    assert (a.temperature_c, a.power_w, a.utilization_pct, a.memory_used_mb, a.memory_total_mb) == (
        36,
        81.25,
        0,
        0,
        143771,
    )
    assert b.power_w == 691.9 and b.throttle_reasons == () and b.throttle_mask is None
    assert c.power_w is None  # nvidia-smi's [N/A] is a missing value, not a bad row


def test_plan_format_accepts_epoch_seconds_and_z_suffix(tmp_path):
    path = _write(tmp_path, PLAN_HEADER + "1748772000,40,,,,\n2025-06-01T10:00:30Z,41,,,,\n")
    a, b = CsvReplaySource(path).samples()
    assert a.ts == datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
    assert b.ts == datetime(2025, 6, 1, 10, 0, 30, tzinfo=UTC)
    assert a.power_w is None


def test_our_samples_format_round_trips(tmp_path):
    original = CsvReplaySource(TRACE, base_time=BASE).samples()
    extra = Sample(
        ts=BASE + timedelta(seconds=200),
        device="gpu1",
        source="nvml",
        temperature_c=71.5,
        power_instant_w=300.25,
        mem_clock_mhz=3201,
        throttle_reasons=("sw_power_cap", "hw_slowdown"),
        throttle_mask=0xC,
        fan_speed_pct=40,
    )
    path = write_samples_csv([*original, extra], tmp_path / "ours.csv")
    back = CsvReplaySource(path)
    assert back.format == "samples" and back.problems == []
    restored = back.samples()
    assert restored[:-1] == original
    assert restored[-1] == Sample(**{**extra.__dict__, "source": "csv"})


def test_samples_format_decodes_a_mask_without_reason_names(tmp_path):
    path = _write(tmp_path, "timestamp,device,temperature_c,throttle_mask\n2025-06-01T00:00:00Z,gpu3,80,0x60\n")
    (s,) = CsvReplaySource(path).samples()
    assert s.device == "gpu3"
    assert s.throttle_reasons == ("sw_thermal_slowdown", "hw_thermal_slowdown")


def test_garbage_rows_are_skipped_and_reported_by_line(tmp_path):
    path = _write(
        tmp_path,
        PLAN_HEADER
        + "2025-06-01T00:00:00Z,40,100,1,2,3\n"  # line 2 ok
        + "this is not a csv row\n"  # line 3: one cell
        + "2025-06-01T00:00:01Z,hot,100,1,2,3\n"  # line 4: temperature not a number
        + "yesterday,41,100,1,2,3\n"  # line 5: timestamp
        + "\n"  # line 6: blank, ignored silently
        + "2025-06-01T00:00:02Z,42,lots,1,2,3\n"  # line 7: power not a number
        + "2025-06-01T00:00:03Z,999,100,1,2,3\n"  # line 8: implausible temperature
        + "2025-06-01T00:00:04Z,nan,100,1,2,3\n"  # line 9: NaN is "missing" (N/A family)
        + "2025-06-01T00:00:05Z,43,100,1,2,3,extra\n"  # line 10: too many cells
        + "2025-06-01T00:00:06Z,44,inf,1,2,3\n"  # line 11: not finite
        + "2025-06-01T00:00:07Z,45,100,1,2,3\n",  # line 12 ok
    )
    src = CsvReplaySource(path)
    kept = src.samples()
    assert [s.temperature_c for s in kept] == [40, None, 45]
    assert [p.split(":")[0] for p in src.problems] == [
        "line 3",
        "line 4",
        "line 5",
        "line 7",
        "line 8",
        "line 10",
        "line 11",
    ]
    assert "temperature_c 'hot' is not a number" in src.problems[1]
    assert "timestamp 'yesterday' does not parse" in src.problems[2]
    assert "outside -50..200" in src.problems[4]
    assert all(p.endswith("skipped") for p in src.problems)


def test_lines_the_csv_module_rejects_are_problems_not_a_stop(tmp_path):
    import csv

    huge = "9" * (csv.field_size_limit() + 1)
    path = _write(
        tmp_path,
        PLAN_HEADER
        + "2025-06-01T00:00:00Z,40,,,,\n"  # 2
        + f"2025-06-01T00:00:01Z,{huge},,,,\n"  # 3: larger than the csv field limit
        + '2025-06-01T00:00:02Z,"41\n42",,,,\n'  # 4-5: a quoted newline: one record, bad number
        + "2025-06-01T00:00:03Z,43,,,,\n",  # 6
    )
    src = CsvReplaySource(path)
    assert [s.temperature_c for s in src.samples()] == [40, 43]
    assert src.problems[0].startswith("line 3: unreadable (field larger than field limit")
    assert src.problems[1].startswith("line 4: temperature_c '41\\n42' is not a number")


def test_missing_required_columns_raise_naming_them(tmp_path):
    no_temp = _write(tmp_path, "timestamp,power_w\n2025-06-01T00:00:00Z,100\n", "a.csv")
    with pytest.raises(TelemetryError, match=r"lacks required column\(s\) temperature_c"):
        CsvReplaySource(no_temp)
    neither = _write(tmp_path, "power_w,utilization_pct\n1,2\n", "b.csv")
    with pytest.raises(TelemetryError, match=r"timestamp, temperature_c"):
        CsvReplaySource(neither)
    probe_no_time = _write(tmp_path, "temperature,power_mw\n40,1000\n", "c.csv")
    with pytest.raises(TelemetryError, match=r"t_s\|timestamp"):
        CsvReplaySource(probe_no_time)
    with pytest.raises(TelemetryError, match="empty"):
        CsvReplaySource(_write(tmp_path, "\n\n", "d.csv"))
    with pytest.raises(TelemetryError, match="cannot read"):
        CsvReplaySource(tmp_path / "absent.csv")


def test_out_of_order_and_duplicate_timestamps_are_dropped_and_reported(tmp_path):
    path = _write(
        tmp_path,
        PLAN_HEADER
        + "2025-06-01T00:00:10Z,40,,,,\n"  # 2
        + "2025-06-01T00:00:20Z,41,,,,\n"  # 3
        + "2025-06-01T00:00:15Z,99,,,,\n"  # 4 back in time: dropped
        + "2025-06-01T00:00:20Z,98,,,,\n"  # 5 duplicate: dropped
        + "2025-06-01T00:00:30Z,42,,,,\n",  # 6
    )
    src = CsvReplaySource(path)
    assert [s.temperature_c for s in src.samples()] == [40, 41, 42]
    assert len(src.problems) == 2
    assert src.problems[0].startswith("line 4: timestamp 2025-06-01T00:00:15+00:00 out of order")
    assert src.problems[1].startswith("line 5:") and "duplicate" in src.problems[1]


def test_time_order_is_judged_per_device(tmp_path):
    path = _write(
        tmp_path,
        "timestamp,device,temperature_c\n"
        "2025-06-01T00:00:10Z,gpu0,40\n"
        "2025-06-01T00:00:10Z,gpu1,50\n"  # same time, other device: fine
        "2025-06-01T00:00:20Z,gpu0,41\n"
        "2025-06-01T00:00:15Z,gpu1,51\n",  # after gpu1's last: fine
    )
    src = CsvReplaySource(path)
    assert src.problems == [] and len(src.samples()) == 4


def test_sample_dict_round_trip_is_json_ready():
    s = CsvReplaySource(TRACE, base_time=BASE).samples()[30]
    d = json.loads(json.dumps(s.to_dict()))
    assert d["ts"] == "2025-06-01T00:00:30.650000+00:00" and d["throttle_reasons"] == ["sw_power_cap"]
    assert Sample.from_dict(d) == s
    naive = Sample(ts=datetime(2025, 1, 1), device="gpu0", source="nvml")
    assert naive.ts.tzinfo is UTC


# -- clocks-event reasons --------------------------------------------------------------------


def test_reason_table_matches_the_real_pynvml_constants():
    expected = {
        "GpuIdle": "gpu_idle",
        "ApplicationsClocksSetting": "applications_clocks_setting",
        "SwPowerCap": "sw_power_cap",
        "HwSlowdown": "hw_slowdown",
        "SyncBoost": "sync_boost",
        "SwThermalSlowdown": "sw_thermal_slowdown",
        "HwThermalSlowdown": "hw_thermal_slowdown",
        "HwPowerBrakeSlowdown": "hw_power_brake_slowdown",
        "DisplayClockSetting": "display_clock_setting",
    }
    for nvml_name, ours in expected.items():
        assert CLOCKS_EVENT_REASONS[getattr(pynvml, f"nvmlClocksEventReason{nvml_name}")] == ours
        assert CLOCKS_EVENT_REASONS[getattr(pynvml, f"nvmlClocksThrottleReason{nvml_name}")] == ours
    assert decode_clocks_event_reasons(pynvml.nvmlClocksEventReasonAll) == tuple(CLOCKS_EVENT_REASONS.values())


def test_decode_reasons():
    assert decode_clocks_event_reasons(None) == ()
    assert decode_clocks_event_reasons(0) == ()
    assert decode_clocks_event_reasons(0x4) == ("sw_power_cap",)
    assert decode_clocks_event_reasons(0x68) == ("hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown")
    assert decode_clocks_event_reasons(0x1000 | 0x1) == ("gpu_idle", "bit_0x1000")


# -- NVML through the real library (no GPU here) -------------------------------------------


def test_nvml_source_on_this_machine():
    try:
        src = NvmlSource()
    except NoDevice as exc:
        # No driver/library here: a clean one-line reason, not a ctypes traceback.
        assert str(exc).startswith("no NVIDIA device: ")
        assert "\n" not in str(exc)
        assert "NVML Shared Library Not Found" in str(exc) or "Driver Not Loaded" in str(exc)
        return
    # A GPU machine: one real sample per device.
    with src:
        samples = src.sample()
        assert samples and all(s.source == "nvml" and s.temperature_c is not None for s in samples)
        assert [t.device for t in src.thresholds()] == [s.device for s in samples]


def test_open_sources_reports_skip_reasons_instead_of_raising():
    sources, skipped = open_sources()
    names = [s.name for s in sources]
    if not _nvml_gpu_present():
        assert "nvml" not in names
        assert any(r.startswith("nvml: no NVIDIA device: ") for r in skipped)
    for s in sources:
        assert isinstance(s, TelemetrySource)
        s.close()
    if "hwmon" not in names:
        assert any(r.startswith("hwmon: no CPU temperature sensor") for r in skipped)


def test_open_sources_replay_replaces_nvml():
    sources, skipped = open_sources(enable_hwmon=False, replay_csv=TRACE, replay_start_index=98)
    assert [s.name for s in sources] == ["csv"]
    assert not any(r.startswith("nvml") for r in skipped)
    samples, errors = sample_all(sources)
    assert errors == [] and [s.temperature_c for s in samples] == [36]
    assert sample_all(sources)[0] == []


def test_open_sources_unreadable_replay_is_a_skip_reason(tmp_path):
    bad = _write(tmp_path, "x,y\n1,2\n")
    sources, skipped = open_sources(enable_nvml=False, enable_hwmon=False, replay_csv=bad)
    assert sources == []
    assert skipped[0].startswith("csv: trace ") and "lacks required column" in skipped[0]
    assert "hwmon: disabled" in skipped


# -- hwmon ---------------------------------------------------------------------------------


def test_hwmon_source_never_raises_here():
    src = HwmonSource()
    samples = src.sample()
    assert isinstance(samples, list)
    for s in samples:
        assert s.source == "hwmon" and s.device.startswith("cpu") and s.temperature_c is not None
    assert src.thresholds() == []


def _shwtemp():
    try:
        from psutil._ntuples import shwtemp
    except ImportError:  # older psutil
        from psutil._common import shwtemp
    return shwtemp


def test_hwmon_k10temp_tctl_and_hottest_ccd():
    t = _shwtemp()
    ts = BASE
    # What psutil returns on a Ryzen 9 9900X (two CCDs), plus an unrelated NVMe sensor.
    sensors = {
        "k10temp": [t("Tctl", 71.25, None, None), t("Tccd1", 68.5, None, None), t("Tccd2", 74.0, None, None)],
        "nvme": [t("Composite", 41.85, 84.85, 84.85)],
    }
    cpu, ccd = cpu_samples_from_sensors(sensors, ts)
    assert (cpu.device, cpu.temperature_c, cpu.source, cpu.ts) == ("cpu", 71.25, "hwmon", ts)
    assert (ccd.device, ccd.temperature_c) == ("cpu-ccd", 74.0)
    # Two sockets: psutil flattens both k10temp chips into one list.
    two = {"k10temp": [t("Tctl", 60, None, None), t("Tccd1", 55, None, None), t("Tctl", 62, None, None)]}
    assert [(s.device, s.temperature_c) for s in cpu_samples_from_sensors(two, ts)] == [
        ("cpu", 60),
        ("cpu-ccd", 55),
        ("cpu1", 62),
    ]


def test_hwmon_intel_coretemp_packages():
    t = _shwtemp()
    sensors = {
        "coretemp": [
            t("Package id 0", 55.0, 84.0, 100.0),
            t("Core 0", 53.0, 84.0, 100.0),
            t("Package id 1", 57.0, 84.0, 100.0),
        ]
    }
    assert [(s.device, s.temperature_c) for s in cpu_samples_from_sensors(sensors, BASE)] == [
        ("cpu", 55.0),
        ("cpu1", 57.0),
    ]


def test_hwmon_no_sensor_is_an_empty_result():
    t = _shwtemp()
    assert cpu_samples_from_sensors({}, BASE) == []
    assert cpu_samples_from_sensors({"acpitz": [t("", 27.8, None, None)]}, BASE) == []


# -- NVML field reading with a stand-in for the pynvml module -----------------------------


def test_stand_in_raises_the_real_pynvml_classes():
    nv = StandInNvml()
    with pytest.raises(pynvml.NVMLError_NotSupported, match="Not Supported"):
        nv.nvmlDeviceGetFanSpeed(("handle", 0))


def test_nvml_sample_decodes_the_h200_report_values():
    nv = StandInNvml()
    s = read_nvml_sample(nv, ("handle", 0), "gpu0", BASE)
    assert s == Sample(
        ts=BASE,
        device="gpu0",
        source="nvml",
        temperature_c=36.0,
        power_w=117.904,
        power_instant_w=82.84,
        energy_mj=2307969.0,
        utilization_pct=0.0,
        memory_used_mb=644939776 / MIB,
        memory_total_mb=143771.0,
        sm_clock_mhz=885.0,
        mem_clock_mhz=3201.0,
        throttle_reasons=("gpu_idle",),
        throttle_mask=1,
        fan_speed_pct=None,  # NotSupported on a passive card: None, and the sample goes on
        energy_source="counter",
        memory_temperature_c=35.0,  # HBM, NVML_FI_DEV_MEMORY_TEMP as recorded
        ecc_volatile_corrected=0,
        ecc_volatile_uncorrected=0,
        ecc_aggregate_corrected=0,
        ecc_aggregate_uncorrected=0,
        retired_pages_sbe=None,  # Hopper remaps rows: page retirement is NotSupported
        retired_pages_dbe=None,
        retired_pages_pending=None,
        remapped_rows_correctable=0,
        remapped_rows_uncorrectable=0,
        remap_pending=False,
        remap_failure=False,
        pcie_replay_count=0,
        power_limit_w=700.0,
        power_default_limit_w=700.0,
        xid_errors=None,  # no event set passed: not watched
    )
    assert nv.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1  # ~4 ms each: exactly once
    assert nv.calls["nvmlDeviceGetFieldValues"] == 1  # power instant and memory temperature in one call


def test_nvml_thresholds_from_the_h200_report():
    t = read_nvml_thresholds(StandInNvml(), ("handle", 0), "gpu0")
    assert t == DriverThresholds(
        device="gpu0", slowdown_c=89, shutdown_c=95, gpu_max_c=87, mem_max_c=95, power_limit_w=700.0
    )


def test_every_field_not_supported_still_gives_a_sample():
    fail = {name: pynvml.NVML_ERROR_NOT_SUPPORTED for name in StandInNvml._functions() if "Device" in name}
    s = read_nvml_sample(StandInNvml(fail=fail), ("handle", 0), "gpu0", BASE)
    assert s.device == "gpu0" and s.ts == BASE
    assert all(v is None for k, v in s.to_dict().items() if k not in ("ts", "device", "source", "throttle_reasons"))
    t = read_nvml_thresholds(StandInNvml(fail=fail), ("handle", 0), "gpu0")
    assert (t.slowdown_c, t.shutdown_c, t.gpu_max_c, t.power_limit_w) == (None, None, None, None)


def test_not_supported_fields_are_asked_once_then_skipped():
    nv = StandInNvml()
    unsupported: set[str] = set()
    for _ in range(3):
        read_nvml_sample(nv, ("handle", 0), "gpu0", BASE, unsupported=unsupported)
    assert nv.calls["nvmlDeviceGetFanSpeed"] == 1  # 140 us per NotSupported answer on the H200
    assert nv.calls["nvmlDeviceGetTemperature"] == 3
    assert nv.calls["nvmlDeviceGetRetiredPages"] == 2  # once per cause, then remembered
    assert unsupported == {"fan", "retired_pages_sbe", "retired_pages_dbe", "retired_pages_pending"}


def test_field_value_with_its_own_error_code_is_none():
    nv = StandInNvml()
    nv.instant = {"ret": pynvml.NVML_ERROR_NOT_SUPPORTED, "type": 1, "ui": 0}
    unsupported: set[str] = set()
    s = read_nvml_sample(nv, ("handle", 0), "gpu0", BASE, unsupported=unsupported)
    assert s.power_instant_w is None and s.power_w == 117.904
    assert "power_instant" in unsupported


def test_other_errors_give_none_and_are_asked_again():
    nv = StandInNvml(fail={"nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_TIMEOUT})
    unsupported: set[str] = set()
    first = read_nvml_sample(nv, ("handle", 0), "gpu0", BASE, unsupported=unsupported)
    assert first.power_w is None and first.temperature_c == 36
    del nv.fail["nvmlDeviceGetPowerUsage"]
    second = read_nvml_sample(nv, ("handle", 0), "gpu0", BASE, unsupported=unsupported)
    assert second.power_w == 117.904
    assert "power" not in unsupported


@pytest.mark.parametrize(
    "code",
    [pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_UNINITIALIZED, pynvml.NVML_ERROR_DRIVER_NOT_LOADED],
)
def test_driver_gone_raises_telemetry_error(code):
    nv = StandInNvml(fail={"nvmlDeviceGetUtilizationRates": code})
    with pytest.raises(TelemetryError, match=r"NVIDIA driver gone \(gpu0, reading utilization\)") as info:
        read_nvml_sample(nv, ("handle", 0), "gpu0", BASE)
    assert not isinstance(info.value, NoDevice)
    assert isinstance(info.value.__cause__, pynvml.NVMLError)


def test_clocks_event_reasons_fall_back_to_the_throttle_call():
    old_binding = StandInNvml(drop=("nvmlDeviceGetCurrentClocksEventReasons",))
    old_binding.mask = 0x24
    s = read_nvml_sample(old_binding, ("handle", 0), "gpu0", BASE)
    assert s.throttle_reasons == ("sw_power_cap", "sw_thermal_slowdown")
    old_driver = StandInNvml(fail={"nvmlDeviceGetCurrentClocksEventReasons": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
    assert read_nvml_sample(old_driver, ("handle", 0), "gpu0", BASE).throttle_mask == 1
    assert old_driver.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1


def test_nvml_source_inits_once_reads_thresholds_once_and_samples_every_device():
    nv = StandInNvml(devices=2)
    ticks = iter([BASE, BASE + timedelta(seconds=1), BASE + timedelta(seconds=30), BASE + timedelta(seconds=31)])
    src = NvmlSource(nvml=nv, clock=lambda: next(ticks), monotonic=iter([0.0, 0.0, 1.0, 1.0]).__next__)
    first = src.sample()
    second = src.sample()
    assert [s.device for s in first] == ["gpu0", "gpu1"]
    assert [s.ts for s in first + second] == [BASE + timedelta(seconds=x) for x in (0, 1, 30, 31)]
    assert nv.calls["nvmlInit"] == 1
    assert nv.calls["nvmlDeviceGetTemperatureThreshold"] == 8  # 4 per device, at start only
    # ~4 ms a read: once per device at the first sample, then power is integrated (once a minute)
    assert nv.calls["nvmlDeviceGetTotalEnergyConsumption"] == 2
    assert [s.energy_source for s in first + second] == ["counter", "counter", "integrated", "integrated"]
    assert nv.calls["nvmlDeviceGetFanSpeed"] == 2  # once per device, then remembered
    assert nv.calls["nvmlDeviceGetPowerManagementDefaultLimit"] == 2  # a constant: once per device
    retired = ["retired_pages_dbe", "retired_pages_pending", "retired_pages_sbe"]
    assert src.unsupported_fields == {"gpu0": ["fan", *retired], "gpu1": ["fan", *retired]}
    assert src.xid_registration == {"gpu0": "registered", "gpu1": "registered"}
    assert [s.xid_errors for s in first + second] == [()] * 4
    assert [t.slowdown_c for t in src.thresholds()] == [89, 89]
    assert src.gpu_names == {"gpu0": "NVIDIA H200", "gpu1": "NVIDIA H200"}
    src.close()
    src.close()
    assert nv.calls["nvmlShutdown"] == 1
    assert nv.calls["nvmlEventSetFree"] == 2  # the event sets go back before nvmlShutdown
    with pytest.raises(TelemetryError, match="closed"):
        src.sample()


@pytest.mark.parametrize(
    ("fail", "kind", "message"),
    [
        (
            {"nvmlInit": pynvml.NVML_ERROR_LIBRARY_NOT_FOUND},
            NoDevice,
            "no NVIDIA device: NVML Shared Library Not Found",
        ),
        ({"nvmlInit": pynvml.NVML_ERROR_DRIVER_NOT_LOADED}, NoDevice, "no NVIDIA device: Driver Not Loaded"),
        ({"nvmlInit": pynvml.NVML_ERROR_NO_PERMISSION}, TelemetryError, "NVML unavailable: Insufficient Permissions"),
        (
            {"nvmlDeviceGetHandleByIndex": pynvml.NVML_ERROR_GPU_IS_LOST},
            TelemetryError,
            "NVIDIA driver gone: GPU is lost",
        ),
    ],
)
def test_nvml_source_start_failures(fail, kind, message):
    nv = StandInNvml(fail=fail)
    with pytest.raises(kind, match=re.escape(message)) as info:
        NvmlSource(nvml=nv)
    assert str(info.value) == message
    if kind is TelemetryError:
        assert not isinstance(info.value, NoDevice)
    if "nvmlInit" not in fail:
        assert nv.calls["nvmlShutdown"] == 1  # a half-opened session is closed again


def test_nvml_source_with_zero_devices_is_no_device():
    nv = StandInNvml(devices=0)
    with pytest.raises(NoDevice, match="found 0 GPUs"):
        NvmlSource(nvml=nv)
    assert nv.calls["nvmlShutdown"] == 1


def test_open_sources_with_a_failing_nvml_gives_a_reason():
    sources, skipped = open_sources(
        enable_hwmon=False, nvml=StandInNvml(fail={"nvmlInit": pynvml.NVML_ERROR_DRIVER_NOT_LOADED})
    )
    assert sources == [] and skipped == ["nvml: no NVIDIA device: Driver Not Loaded", "hwmon: disabled"]


class TraceNvml(StandInNvml):
    """The stand-in stepping through the real H200 trace row by row."""

    def __init__(self, rows: list[Sample]):
        super().__init__()
        self.rows = rows
        self.row = rows[0]

    def _nvmlDeviceGetTemperature(self, handle, sensor):
        return int(self.row.temperature_c)

    def _nvmlDeviceGetPowerUsage(self, handle):
        return round(self.row.power_w * 1000)

    def _nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return int(self.row.energy_mj)

    def _nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self.row.throttle_mask


def test_h200_trace_through_the_nvml_path_gives_the_csv_values():
    rows = CsvReplaySource(TRACE, base_time=BASE).samples()
    nv = TraceNvml(rows)
    clock_rows = iter(rows)

    def clock():
        nv.row = next(clock_rows)
        return nv.row.ts

    # energy_read_interval_s=0: the counter on every sample (the integration is test_gpu_health's)
    src = NvmlSource(nvml=nv, clock=clock, energy_read_interval_s=0)
    via_nvml = [src.sample()[0] for _ in rows]
    for a, b in zip(via_nvml, rows, strict=True):
        assert (a.ts, a.temperature_c, a.power_w, a.energy_mj, a.throttle_reasons) == (
            b.ts,
            b.temperature_c,
            pytest.approx(b.power_w),
            b.energy_mj,
            b.throttle_reasons,
        )


def test_ctypes_field_value_union_types():
    # valueType 5 (signed int) as the TLIMIT fields report: the member is chosen by type.
    from idp_ops.thermal.telemetry import _field_value

    fv = pynvml.c_nvmlFieldValue_t()
    fv.nvmlReturn = 0
    fv.valueType = pynvml.NVML_VALUE_TYPE_SIGNED_INT
    fv.value.siVal = ctypes.c_int(-2).value
    assert _field_value(pynvml, fv) == -2.0
    fv.valueType = pynvml.NVML_VALUE_TYPE_DOUBLE
    fv.value.dVal = 1.5
    assert _field_value(pynvml, fv) == 1.5
