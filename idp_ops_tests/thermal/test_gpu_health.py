"""GPU health beyond temperature (issue 13): XID events, ECC, retired pages, remapped rows, memory
temperature, PCIe replays, power limits, and the energy counter read once a minute.

There is no GPU here: NVML is the stand-in (idp_ops_harness/nvml_stand_in.py), which uses the
real pynvml constants, structures and error classes. Everything else is real: the watch tick,
the alerts log and spool files, the DuckDB history and its rollups.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pynvml
import pytest

from idp_ops.history import database as history
from idp_ops.settings import ThermalThresholds
from idp_ops.thermal.energy import EnergyIntegrator
from idp_ops.thermal.health import FATAL_XIDS, NON_FATAL_XIDS, HealthJudge
from idp_ops.thermal.policy import PolicyConfig, ThermalPolicy
from idp_ops.thermal.store import insert_samples, rollup_day
from idp_ops.thermal.telemetry import CsvReplaySource, NvmlSource, Sample, write_samples_csv
from idp_ops.thermal.watch import AlertSink, Spool, WatchState, record_tick, watch_tick
from idp_ops_harness.nvml_stand_in import StandInNvml
from idp_ops_harness.recorded_data import FIXTURES

BASE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UNC_VOL = (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)
UNC_AGG = (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC)
COR_VOL = (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC)
COR_AGG = (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC)
HEALTH_FIELDS = [
    "memory_temperature_c",
    "ecc_volatile_corrected",
    "ecc_volatile_uncorrected",
    "ecc_aggregate_corrected",
    "ecc_aggregate_uncorrected",
    "retired_pages_sbe",
    "retired_pages_dbe",
    "retired_pages_pending",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "remap_pending",
    "remap_failure",
    "pcie_replay_count",
    "power_limit_w",
    "power_default_limit_w",
]


class Clock:
    """Wall and monotonic time for a source, stepped by the test (one second per tick)."""

    def __init__(self) -> None:
        self.t = 0.0

    def wall(self) -> datetime:
        return BASE + timedelta(seconds=self.t)

    def mono(self) -> float:
        return self.t


def _source(nv: StandInNvml, clock: Clock | None = None, **kwargs) -> NvmlSource:
    clock = clock or Clock()
    return NvmlSource(nvml=nv, clock=clock.wall, monotonic=clock.mono, **kwargs)


# -- reading every new field -----------------------------------------------------------------


def test_every_health_field_is_read_through_nvml():
    nv = StandInNvml()
    nv.ecc = {COR_VOL: 12, UNC_VOL: 1, COR_AGG: 340, UNC_AGG: 2}
    nv.remapped = [3, 1, 1, 0]
    nv.retired_pages = {
        pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS: [0x1000, 0x2000],
        pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR: [0x3000],
    }
    nv.retired_pending = 1
    nv.pcie_replays = 17
    nv.power_limit_mw = 550_000  # capped below the board default (nvidia-smi -pl 550)
    nv.memory_temp = {"ret": 0, "type": 1, "ui": 41}
    nv.inject_xid(31)
    with _source(nv) as src:
        (s,) = src.sample()
    assert {f: getattr(s, f) for f in HEALTH_FIELDS} == {
        "memory_temperature_c": 41.0,
        "ecc_volatile_corrected": 12,
        "ecc_volatile_uncorrected": 1,
        "ecc_aggregate_corrected": 340,
        "ecc_aggregate_uncorrected": 2,
        "retired_pages_sbe": 2,
        "retired_pages_dbe": 1,
        "retired_pages_pending": True,
        "remapped_rows_correctable": 3,
        "remapped_rows_uncorrectable": 1,
        "remap_pending": True,
        "remap_failure": False,
        "pcie_replay_count": 17,
        "power_limit_w": 550.0,
        "power_default_limit_w": 700.0,
    }
    assert s.xid_errors == (31,)
    assert s.energy_source == "counter" and s.energy_mj == nv.energy_mj
    assert nv.calls["nvmlDeviceGetFieldValues"] == 1  # memory temperature rides with power instant


def test_not_supported_health_fields_are_none_and_asked_once():
    health_calls = [
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetRetiredPages",
        "nvmlDeviceGetRetiredPagesPendingStatus",
        "nvmlDeviceGetRemappedRows",
        "nvmlDeviceGetPcieReplayCounter",
        "nvmlDeviceGetPowerManagementDefaultLimit",
        "nvmlDeviceRegisterEvents",
    ]
    nv = StandInNvml(fail=dict.fromkeys(health_calls, pynvml.NVML_ERROR_NOT_SUPPORTED))
    nv.memory_temp = {"ret": pynvml.NVML_ERROR_NOT_SUPPORTED, "type": 1, "ui": 0}
    clock = Clock()
    with _source(nv, clock) as src:
        samples = []
        for _ in range(3):
            samples += src.sample()
            clock.t += 1
        assert src.xid_registration == {"gpu0": "not supported"}
        assert set(src.unsupported_fields["gpu0"]) >= {
            "memory_temperature",
            "ecc_volatile_corrected",
            "ecc_aggregate_uncorrected",
            "retired_pages_sbe",
            "remapped_rows",
            "pcie_replay",
            "power_default_limit",
        }
    for s in samples:
        assert s.temperature_c == 36.0  # the thermal fields go on
        assert s.power_limit_w == 700.0  # the enforced limit is still answered
        assert all(getattr(s, f) is None for f in HEALTH_FIELDS if f != "power_limit_w")
        assert s.xid_errors is None  # not watched, which is not "none seen"
    assert nv.calls["nvmlDeviceGetTotalEccErrors"] == 4  # four counters, each asked once
    assert nv.calls["nvmlDeviceGetRemappedRows"] == 1
    assert "nvmlEventSetWait_v2" not in nv.calls
    assert nv.freed_sets == [1]  # the set whose registration failed is not leaked


def test_an_empty_event_set_answers_timeout_which_is_no_event_not_an_error():
    nv = StandInNvml()
    with _source(nv) as src:
        (s,) = src.sample()
        assert s.xid_errors == ()
        assert src.unsupported_fields == {
            "gpu0": ["fan", "retired_pages_dbe", "retired_pages_pending", "retired_pages_sbe"]
        }
    event_set = nv.nvmlEventSetCreate()
    nv.nvmlDeviceRegisterEvents(("handle", 0), pynvml.nvmlEventTypeXidCriticalError, event_set)
    with pytest.raises(pynvml.NVMLError_Timeout):  # the real class, as NVML answers an empty set
        nv.nvmlEventSetWait_v2(event_set, 0)


@pytest.mark.parametrize("call", ["nvmlDeviceGetRemappedRows", "nvmlEventSetWait_v2", "nvmlDeviceGetTotalEccErrors"])
def test_a_lost_gpu_during_a_health_read_is_a_device_error(call):
    nv = StandInNvml(devices=2)
    with _source(nv) as src:
        src.sample()
        nv.fail[call] = pynvml.NVML_ERROR_GPU_IS_LOST
        with pytest.raises(Exception, match="GPU is lost"):
            src.sample()  # every device fails: TelemetryError, the caller reopens NVML
        assert set(src.device_errors) == {"gpu0", "gpu1"}


def test_xid_events_drained_before_an_error_come_with_the_next_sample():
    nv = StandInNvml()
    with _source(nv) as src:
        src.sample()
        nv.inject_xid(13, times=2)
        real_wait = nv.nvmlEventSetWait_v2
        answers = iter([None, "fail"])

        def flaky(event_set, timeout_ms):
            if next(answers, None) == "fail":
                raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
            return real_wait(event_set, timeout_ms)

        nv.nvmlEventSetWait_v2 = flaky
        (s,) = src.sample()
        assert s.xid_errors is None  # unknown this time
        nv.nvmlEventSetWait_v2 = real_wait
        (s,) = src.sample()
        assert s.xid_errors == (13, 13)


# -- judging: one alert per event, containment for the fatal XIDs -----------------------------


def _tick(src, state, tmp_path: Path, config: PolicyConfig | None = None):
    result = watch_tick([src], config or PolicyConfig(), state, latch=None)
    record_tick(result, Spool(tmp_path / "spool"), AlertSink(tmp_path / "alerts.jsonl"), origin="test")
    return result


def _alerts(tmp_path: Path, action: str | None = None) -> list[dict]:
    path = tmp_path / "alerts.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [r for r in lines if action is None or r["action"] == action]


def test_one_xid_event_gives_exactly_one_alert_over_many_ticks(tmp_path):
    nv, clock = StandInNvml(), Clock()
    state = WatchState(epoch="ep1")
    with _source(nv, clock) as src:
        _tick(src, state, tmp_path)
        nv.inject_xid(31)
        for _ in range(6):
            clock.t += 5
            result = _tick(src, state, tmp_path)
            assert result.to_contain == []  # XID 31 is the application's: an alert, no containment
    (alert,) = _alerts(tmp_path, "xid")
    assert alert["device"] == "gpu0" and alert["episode"] == "gpu0-ep1-xid1"
    assert alert["reason"].startswith("XID 31: GPU memory page fault")
    assert _alerts(tmp_path, "contain") == []
    # A second event of the same XID is a second alert (its own id), not a repeat of the first.
    with _source(nv, clock) as src:
        nv.inject_xid(31)
        _tick(src, state, tmp_path)
        _tick(src, state, tmp_path)
    assert [a["episode"] for a in _alerts(tmp_path, "xid")] == ["gpu0-ep1-xid1", "gpu0-ep1-xid2"]
    # The XIDs are in the spool (and so in thermal_log) on the sample that drained them.
    spooled = Spool(tmp_path / "spool").read(BASE.date())[0]
    assert sum(1 for s in spooled if s.xid_errors) == 2


def test_a_burst_of_one_xid_in_one_sample_is_one_alert_with_its_count(tmp_path):
    nv = StandInNvml()
    with _source(nv) as src:
        nv.inject_xid(13, times=5)
        nv.inject_xid(43)
        _tick(src, WatchState(epoch="ep"), tmp_path)
    alerts = _alerts(tmp_path, "xid")
    assert [a["reason"].split(":")[0] for a in alerts] == ["XID 13", "XID 43"]
    assert "(5 events)" in alerts[0]["reason"]


def test_a_fatal_xid_requests_containment_once_in_its_own_episode(tmp_path):
    nv, clock = StandInNvml(), Clock()
    state = WatchState(epoch="ep2")
    with _source(nv, clock) as src:
        _tick(src, state, tmp_path)
        nv.inject_xid(79)  # fallen off the bus
        result = _tick(src, state, tmp_path)
        (request,) = result.to_contain
        assert request.episode == "gpu0-ep2-xid1" and request.device == "gpu0"
        assert request.run_key == "contain:gpu0-ep2-xid1"
        assert "fallen off the bus" in request.decision.reason
        assert [d.action for d in result.decisions] == ["xid", "contain"]
        assert ThermalPolicy(PolicyConfig(), state=state.policy).latched == {"gpu0": "gpu0-ep2-xid1"}
        # A second fatal XID while latched: alerted, no second containment.
        nv.inject_xid(48)
        clock.t += 5
        result = _tick(src, state, tmp_path)
        assert [d.action for d in result.decisions] == ["xid"]
        assert "already latched since episode gpu0-ep2-xid1" in result.decisions[0].reason
    assert [a["episode"] for a in _alerts(tmp_path, "contain")] == ["gpu0-ep2-xid1"]
    assert len(_alerts(tmp_path, "xid")) == 2


def test_ecc_rises_alert_once_per_rise(tmp_path):
    nv, clock = StandInNvml(), Clock()
    nv.ecc[UNC_AGG] = 4  # the card's lifetime count when the watch starts: a baseline, not news
    state = WatchState(epoch="ep3")
    with _source(nv, clock) as src:
        for step in range(8):
            if step == 2:
                nv.ecc[UNC_VOL] = 1
                nv.ecc[UNC_AGG] = 5  # the same error in both counters: one alert
            if step == 5:
                nv.ecc[UNC_VOL] = 3
            if step == 6:
                nv.ecc[COR_VOL] = 1000  # corrected errors are not alerts
            _tick(src, state, tmp_path)
            clock.t += 5
    alerts = _alerts(tmp_path, "ecc")
    assert [a["episode"] for a in alerts] == ["gpu0-ep3-ecc1", "gpu0-ep3-ecc2"]
    assert "volatile (since the driver loaded) uncorrectable ECC errors rose 0 -> 1" in alerts[0]["reason"]
    assert "aggregate (card lifetime) uncorrectable ECC errors rose 4 -> 5" in alerts[0]["reason"]
    assert "rose 1 -> 3" in alerts[1]["reason"]
    assert _alerts(tmp_path, "contain") == []


def test_ecc_first_sight_and_driver_reload():
    judge = HealthJudge()
    s = Sample(ts=BASE, device="gpu0", source="nvml", ecc_volatile_uncorrected=2, ecc_aggregate_uncorrected=9)
    (event,) = judge.observe(s)
    assert event.kind == "ecc" and "2 on first sight" in event.reason and "aggregate" not in event.reason
    reload = Sample(ts=BASE, device="gpu0", source="nvml", ecc_volatile_uncorrected=0, ecc_aggregate_uncorrected=9)
    assert judge.observe(reload) == []  # volatile back to 0 after a driver reload: a new baseline
    unknown = Sample(ts=BASE, device="gpu0", source="nvml")
    assert judge.observe(unknown) == []  # unknown keeps the last values
    again = Sample(ts=BASE, device="gpu0", source="nvml", ecc_volatile_uncorrected=1, ecc_aggregate_uncorrected=10)
    assert [e.n for e in judge.observe(again)] == [2]


def test_pending_row_remap_alerts_once_per_spell_and_failure_alerts(tmp_path):
    nv, clock = StandInNvml(), Clock()
    state = WatchState(epoch="ep4")
    with _source(nv, clock) as src:
        for step in range(10):
            nv.remapped = {2: [0, 1, 1, 0], 3: [0, 1, 1, 0], 4: [0, 1, 1, 0], 5: [0, 1, 0, 0]}.get(step, nv.remapped)
            if step == 7:
                nv.remapped = [0, 2, 1, 1]  # pending again after a reset, and this time it failed
            _tick(src, state, tmp_path)
            clock.t += 5
    alerts = _alerts(tmp_path, "remap")
    assert [a["episode"] for a in alerts] == ["gpu0-ep4-remap1", "gpu0-ep4-remap2", "gpu0-ep4-remap3"]
    assert alerts[0]["reason"].startswith("row remap pending") and "1 uncorrectable" in alerts[0]["reason"]
    assert alerts[2]["reason"].startswith("row remapping FAILED")


def test_health_state_survives_the_cursor(tmp_path):
    """The sensor rebuilds its state from the cursor JSON each tick: no repeat, no lost baseline."""
    nv, clock = StandInNvml(), Clock()
    cursor = WatchState(epoch="ep5").to_json()
    with _source(nv, clock) as src:
        for step in range(6):
            nv.remapped = [0, 1, 1, 0] if step >= 1 else nv.remapped
            nv.ecc[UNC_VOL] = 2 if step >= 3 else 0
            state = WatchState.from_json(cursor)
            _tick(src, state, tmp_path)
            cursor = state.to_json()
            clock.t += 5
    assert [a["action"] for a in _alerts(tmp_path) if a["action"] in ("remap", "ecc")] == ["remap", "ecc"]
    health = json.loads(cursor)["policy"]["health"]["devices"]["gpu0"]
    assert health["remap_pending"] is True and health["ecc_volatile_uncorrected"] == 2


def test_catalogue_of_fatal_xids():
    assert {48, 79, 95, 119, 120} <= set(FATAL_XIDS)
    assert all(reason.strip() for reason in FATAL_XIDS.values())
    # Not containment: a contained ECC error stopped one application; a high SBE rate is corrected.
    assert not set(NON_FATAL_XIDS) & set(FATAL_XIDS)
    assert {92, 94} <= set(NON_FATAL_XIDS)


# -- energy: the counter once a minute, power integrated in between --------------------------


def _trace(name: str) -> list[Sample]:
    return CsvReplaySource(FIXTURES / name, base_time=BASE).samples()


class TraceNvml(StandInNvml):
    """The stand-in answering power and the energy counter from a recorded H200 trace."""

    def __init__(self, rows: list[Sample]):
        super().__init__()
        self.row = rows[0]

    def _nvmlDeviceGetPowerUsage(self, handle):
        return round(self.row.power_w * 1000)

    def _nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return int(self.row.energy_mj)


def _replay_energy(rows: list[Sample], interval_s: float) -> tuple[list[Sample], int]:
    nv = TraceNvml(rows)
    clock = {"row": rows[0]}
    src = NvmlSource(
        nvml=nv,
        clock=lambda: clock["row"].ts,
        monotonic=lambda: (clock["row"].ts - rows[0].ts).total_seconds(),
        energy_read_interval_s=interval_s,
    )
    out = []
    for row in rows:
        clock["row"] = nv.row = row
        out += src.sample()
    src.close()
    return out, nv.calls["nvmlDeviceGetTotalEnergyConsumption"]


@pytest.mark.parametrize("trace", ["h200_trace.csv", "h200_live_trace.csv"])
@pytest.mark.parametrize("interval_s", [60.0, 30.0, math.inf])
def test_energy_integrated_between_counter_reads_stays_within_1_percent(trace, interval_s):
    rows = _trace(trace)
    samples, reads = _replay_energy(rows, interval_s)
    span_s = (rows[-1].ts - rows[0].ts).total_seconds()
    assert reads == (1 if interval_s == math.inf else 1 + int(span_s // interval_s))
    assert reads < len(rows) / 20  # ~4 ms each: the point of integrating
    assert samples[0].energy_source == "counter"
    assert {s.energy_source for s in samples[1:]} >= {"integrated"}
    truth_kwh = (rows[-1].energy_mj - rows[0].energy_mj) / 3.6e9
    ours_kwh = (samples[-1].energy_mj - samples[0].energy_mj) / 3.6e9
    assert ours_kwh == pytest.approx(truth_kwh, rel=0.01)
    # The counter reads themselves are exact.
    by_ts = {r.ts: r.energy_mj for r in rows}
    assert all(s.energy_mj == by_ts[s.ts] for s in samples if s.energy_source == "counter")


def test_integration_alone_over_the_whole_load_trace_is_within_1_percent():
    """The hardest case: one counter read at the start, power integrated across idle -> load -> idle."""
    rows = _trace("h200_trace.csv")
    assert max(r.power_w for r in rows) > 600 and min(r.power_w for r in rows) < 100  # it is a load trace
    samples, reads = _replay_energy(rows, math.inf)
    assert reads == 1
    total = rows[-1].energy_mj - rows[0].energy_mj
    # All along the trace, not just at its end: never off by more than 1 % of the trace's energy.
    for a, b in zip(samples, rows, strict=True):
        assert abs((a.energy_mj - samples[0].energy_mj) - (b.energy_mj - rows[0].energy_mj)) < 0.01 * total


def test_hourly_kwh_in_duckdb_matches_the_counter_with_integrated_samples(tmp_path):
    """A counter read that lands below the integrated estimate is a correction, not a counter reset."""
    rows = _trace("h200_trace.csv")
    # Spread the 99 s trace over 20 minutes so several counter reads correct the integration.
    stretched = [
        Sample(
            ts=BASE + (r.ts - rows[0].ts) * 12,
            device="gpu0",
            source="csv",
            temperature_c=r.temperature_c,
            # A power reading 2 % high (a real sensor's bias): the integration overshoots and
            # each counter read corrects it DOWNWARDS.
            power_w=r.power_w * 1.02,
            energy_mj=rows[0].energy_mj + (r.energy_mj - rows[0].energy_mj) * 12,
        )
        for r in rows
    ]
    samples, reads = _replay_energy(stretched, 60.0)
    assert reads >= 15
    corrections = [
        (a, b) for a, b in zip(samples, samples[1:]) if b.energy_source == "counter" and b.energy_mj < a.energy_mj
    ]
    assert corrections  # the case the rollup must not mistake for a reset
    with history.connect(tmp_path / "history.duckdb") as con:
        assert insert_samples(con, samples) == len(samples)
        hourly = rollup_day(con, BASE.replace(hour=0), warn_c=85, contain_c=90, max_gap_s=60)
        stored = con.execute("SELECT count(*) FROM thermal_samples WHERE energy_source = 'integrated'").fetchone()[0]
    assert stored == len(samples) - reads
    truth_kwh = (stretched[-1].energy_mj - stretched[0].energy_mj) / 3.6e9
    assert sum(h["energy_kwh"] for h in hourly) == pytest.approx(truth_kwh, rel=0.01)


def test_a_real_counter_reset_is_still_a_reset_in_the_rollup(tmp_path):
    s = [
        Sample(ts=BASE, device="gpu0", source="nvml", energy_mj=9e6, energy_source="counter"),
        Sample(
            ts=BASE + timedelta(seconds=30), device="gpu0", source="nvml", energy_mj=9.3e6, energy_source="integrated"
        ),
        # The driver reloaded: the counter restarted from zero.
        Sample(ts=BASE + timedelta(seconds=60), device="gpu0", source="nvml", energy_mj=0.2e6, energy_source="counter"),
    ]
    with history.connect(tmp_path / "history.duckdb") as con:
        insert_samples(con, s)
        (hour,) = rollup_day(con, BASE.replace(hour=0), warn_c=85, contain_c=90, max_gap_s=60)
    assert hour["energy_kwh"] == pytest.approx((0.3e6 + 0.2e6) / 3.6e9)


def test_energy_interval_comes_from_the_settings_through_the_tick(tmp_path):
    thermal = ThermalThresholds(energy_read_interval_s=10)
    nv, clock = StandInNvml(), Clock()
    with _source(nv, clock) as src:
        assert src.energy_read_interval_s == 60.0  # the default until a tick says otherwise
        state = WatchState(epoch="e")
        for _ in range(25):
            watch_tick([src], PolicyConfig.from_thresholds(thermal), state, latch=None)
            clock.t += 1
        assert src.energy_read_interval_s == 10.0
    assert nv.calls["nvmlDeviceGetTotalEnergyConsumption"] == 3  # t = 0, 10, 20
    with pytest.raises(ValueError):
        EnergyIntegrator(-1)


def test_a_failed_power_read_falls_back_to_the_counter():
    nv, clock = StandInNvml(), Clock()
    with _source(nv, clock) as src:
        src.sample()
        clock.t += 1
        nv.fail["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_UNKNOWN
        (s,) = src.sample()
        assert s.energy_source == "counter"  # nothing to integrate with
        del nv.fail["nvmlDeviceGetPowerUsage"]
        clock.t += 1
        (s,) = src.sample()
        assert s.energy_source == "counter"  # the power before is unknown: no trapezoid to draw
        clock.t += 1
        (s,) = src.sample()
        assert s.energy_source == "integrated"
        assert src.energy_counter_reads == {"gpu0": 3}


# -- records: spool lines, CSV, DuckDB --------------------------------------------------------


def test_old_spool_lines_still_parse(tmp_path):
    old = (
        '{"ts": "2026-03-01T12:00:00+00:00", "device": "gpu0", "source": "nvml", "temperature_c": 40.0, '
        '"power_w": 80.0, "power_instant_w": null, "energy_mj": 2400000.0, "utilization_pct": 0.0, '
        '"memory_used_mb": 615.0, "memory_total_mb": 143771.0, "sm_clock_mhz": 345.0, "mem_clock_mhz": 3201.0, '
        '"throttle_reasons": ["gpu_idle"], "throttle_mask": 1, "fan_speed_pct": null}'
    )
    older = '{"ts": "2026-03-01T12:00:01+00:00", "device": "cpu", "source": "hwmon", "temperature_c": 55.0}'
    spool = Spool(tmp_path)
    spool.path_for(BASE.date()).write_text(old + "\n" + older + "\n")
    new = Sample(
        ts=BASE + timedelta(seconds=2),
        device="gpu0",
        source="nvml",
        temperature_c=41.0,
        energy_mj=2500000.0,
        energy_source="integrated",
        ecc_aggregate_uncorrected=3,
        remap_pending=True,
        xid_errors=(79, 48),
    )
    spool.append([new])
    samples, problems = spool.read(BASE.date())
    assert problems == []
    assert samples[0].energy_mj == 2400000.0 and samples[0].energy_source is None
    assert all(getattr(samples[0], f) is None for f in HEALTH_FIELDS) and samples[0].xid_errors is None
    assert samples[1].temperature_c == 55.0
    assert samples[2] == new and samples[2].xid_errors == (79, 48)


def test_health_fields_round_trip_through_the_samples_csv(tmp_path):
    samples = [
        Sample(
            ts=BASE + timedelta(seconds=i),
            device="gpu0",
            source="csv",
            temperature_c=40.0 + i,
            energy_source="counter" if i == 0 else "integrated",
            memory_temperature_c=38.0,
            ecc_volatile_uncorrected=i,
            remap_pending=bool(i),
            remap_failure=False,
            pcie_replay_count=7,
            power_limit_w=650.0,
            xid_errors=[(), (79,), None][i],
        )
        for i in range(3)
    ]
    back = CsvReplaySource(write_samples_csv(samples, tmp_path / "s.csv"))
    assert back.problems == []
    assert back.samples() == samples


def test_health_columns_are_stored_by_migration_2(tmp_path):
    s = Sample(
        ts=BASE,
        device="gpu0",
        source="nvml",
        temperature_c=40.0,
        energy_source="counter",
        memory_temperature_c=38.0,
        ecc_volatile_uncorrected=1,
        ecc_aggregate_uncorrected=6,
        remapped_rows_uncorrectable=2,
        remap_pending=True,
        remap_failure=False,
        pcie_replay_count=12,
        power_limit_w=550.0,
        power_default_limit_w=700.0,
        xid_errors=(79, 48),
    )
    with history.connect(tmp_path / "h.duckdb") as con:
        assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] >= 2
        insert_samples(con, [s, Sample(ts=BASE, device="cpu", source="hwmon", temperature_c=50.0)])
        row = con.execute(
            "SELECT energy_source, memory_temperature_c, ecc_volatile_uncorrected, ecc_aggregate_uncorrected, "
            "remapped_rows_uncorrectable, remap_pending, remap_failure, pcie_replay_count, power_limit_w, "
            "power_default_limit_w, xid_errors FROM thermal_samples WHERE device = 'gpu0'"
        ).fetchone()
        cpu = con.execute("SELECT xid_errors, remap_pending FROM thermal_samples WHERE device = 'cpu'").fetchone()
    assert row == ("counter", 38.0, 1, 6, 2, True, False, 12, 550.0, 700.0, "79,48")
    assert cpu == (None, None)


def test_validations_utilization_sampler_reads_no_energy_and_registers_no_xid_event_set(monkeypatch):
    # The benchmark's sampler runs beside the thermal watch, which owns XIDs and energy: a set of
    # its own would be registered per GPU and never read, and each counter read costs ~3.5 ms.
    import time

    from idp_ops.thermal import telemetry
    from idp_ops.validation.criteria import GpuUtilizationSampler

    nv = StandInNvml()
    monkeypatch.setattr(telemetry, "_import_pynvml", lambda: nv)
    with GpuUtilizationSampler(interval_s=0.01) as sampler:
        deadline = time.monotonic() + 5
        while not sampler.values and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sampler.measured and sampler.error is None
    assert nv.calls.get("nvmlDeviceGetUtilizationRates", 0) >= 1
    untouched = ("nvmlEventSetCreate", "nvmlDeviceRegisterEvents", "nvmlDeviceGetTotalEnergyConsumption")
    assert {name: nv.calls.get(name, 0) for name in untouched} == dict.fromkeys(untouched, 0)
