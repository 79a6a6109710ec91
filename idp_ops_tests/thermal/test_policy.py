"""Thermal policy over the real H200 trace and over hand-made edge cases."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from idp_ops.settings import ThermalThresholds
from idp_ops.thermal.policy import Decision, PolicyConfig, ThermalPolicy, replay
from idp_ops.thermal.telemetry import CsvReplaySource, DriverThresholds, Sample

TRACE = Path(__file__).resolve().parents[1] / "fixtures" / "h200_trace.csv"
BASE = datetime(2025, 6, 1, tzinfo=UTC)

# The trace peaks at 59 C (35 C idle, 58-59 C plateau under load, 36-44 C in the cool-down),
# so the lines are scaled below its peak:
# - warn 50: crossed at the first loaded sample (56 C), far from the plateau;
# - contain 59: the plateau alternates 58/59, so the 59 line is crossed, broken and crossed
#   again dozens of times: the case that would flap without K, the latch and one-per-episode;
# - hysteresis 3 / clear_after 10 s: the cool-down falls to 44 C (< 47) at once and stays at
#   36-40 C for 19 s, so the 10 s clear timer completes inside the 20 s cool-down.
SCALED = PolicyConfig(
    warn_c=50, contain_c=59, slowdown_margin_c=3, consecutive_samples=2, hysteresis_c=3, clear_after_s=10
)


def trace() -> list[Sample]:
    return CsvReplaySource(TRACE, base_time=BASE).samples()


def at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def expected_from_csv(config: PolicyConfig, contain_line: float) -> tuple[float, float, float, float]:
    """The decision times computed straight from the CSV text, without our code:
    (first crossing, warn, contain, clear) in trace seconds."""
    with TRACE.open() as fh:
        rows = [(float(r["t_s"]), float(r["temperature"])) for r in csv.DictReader(fh)]
    k = config.consecutive_samples

    def kth_in_a_row(line: float) -> int:
        for i in range(k - 1, len(rows)):
            if all(rows[j][1] >= line for j in range(i - k + 1, i + 1)):
                return i
        raise AssertionError("never crossed")

    warn_i = kth_in_a_row(config.warn_c)
    contain_i = kth_in_a_row(contain_line)
    last_hot = max(i for i, (_, temp) in enumerate(rows) if temp >= config.warn_c - config.hysteresis_c)
    cool_t = rows[last_hot + 1][0]
    clear_i = next(i for i in range(last_hot + 1, len(rows)) if rows[i][0] - cool_t >= config.clear_after_s)
    return rows[warn_i - k + 1][0], rows[warn_i][0], rows[contain_i][0], rows[clear_i][0]


def test_h200_trace_one_episode_warn_contain_clear():
    decisions = replay(trace(), SCALED)
    first, warn_t, contain_t, clear_t = expected_from_csv(SCALED, 59)
    # What the CSV says: 20.6 s is the first loaded sample (56 C), 21.61 s the second (57 C);
    # 26.64 s and 27.64 s are the first two 59 C samples in a row; 79.87 s the first below
    # 47 C (44 C); 89.91 s the first sample 10 s after it (37 C).
    assert (first, warn_t, contain_t, clear_t) == (20.6, 21.61, 27.64, 89.91)
    episode = "gpu0-e0-1"
    assert [(d.action, d.ts, d.temperature_c, d.episode) for d in decisions] == [
        ("warn", at(warn_t), 57.0, episode),
        ("contain", at(contain_t), 59.0, episode),
        ("clear", at(clear_t), 37.0, episode),
    ]
    assert decisions[0].reason == "temperature 57 C at/above warn line 50 C for 2 samples"
    assert decisions[1].reason.startswith("temperature 59 C at/above contain line 59 C")
    assert decisions[2].reason.startswith("below 47 C (50 - hysteresis 3) for 10.04 s")
    assert decisions[0].to_dict() == {
        "timestamp": "2025-06-01T00:00:21.610000+00:00",
        "device": "gpu0",
        "action": "warn",
        "temperature_c": 57.0,
        "reason": decisions[0].reason,
        "episode": episode,
    }


def test_h200_trace_default_thresholds_decide_nothing():
    # Power-capped (sw_power_cap) for the whole load at <= 59 C: no warning, no containment.
    samples = trace()
    assert sum("sw_power_cap" in s.throttle_reasons for s in samples) == 60
    assert replay(samples, PolicyConfig.from_thresholds(ThermalThresholds())) == []


def test_h200_trace_driver_slowdown_lowers_the_contain_line():
    # A card whose slowdown point is 61 C: contain at min(90, 61 - 3) = 58 C, the first pair of 58 C
    # samples (23.61 s, 24.62 s), not at the configured 90 C that the trace never reaches.
    config = PolicyConfig(warn_c=50, contain_c=90, hysteresis_c=3, clear_after_s=10)
    driver = DriverThresholds(device="gpu0", slowdown_c=61, shutdown_c=70, gpu_max_c=60)
    assert config.contain_line(driver) == 58
    decisions = replay(trace(), config, [driver])
    _, warn_t, contain_t, clear_t = expected_from_csv(config, 58)
    assert contain_t == 24.62
    assert [(d.action, d.ts) for d in decisions] == [
        ("warn", at(warn_t)),
        ("contain", at(contain_t)),
        ("clear", at(clear_t)),
    ]
    assert "min(contain_c 90, driver slowdown 61 - margin 3)" in decisions[1].reason
    # Another device's limits do not apply to gpu0.
    other = DriverThresholds(device="gpu1", slowdown_c=61, shutdown_c=70, gpu_max_c=60)
    assert [d.action for d in replay(trace(), config, [other])] == ["warn", "clear"]


@pytest.mark.parametrize("chunk", [1, 2, 7, 33, 98])
def test_state_round_trip_across_ticks_gives_identical_decisions(chunk):
    samples = trace()
    whole = replay(samples, SCALED)
    state = None
    pieces: list[Decision] = []
    for i in range(0, len(samples), chunk):
        policy = ThermalPolicy(SCALED, state=state)  # what the sensor does each tick
        pieces += policy.observe_all(samples[i : i + chunk])
        state = json.loads(json.dumps(policy.state()))  # the cursor is a string
    assert [d.to_dict() for d in pieces] == [d.to_dict() for d in whole]
    assert state["latched"] == {"gpu0": "gpu0-e0-1"}


def test_a_retried_tick_decides_the_same_and_redelivery_changes_nothing():
    samples = trace()
    policy = ThermalPolicy(SCALED)
    policy.observe_all(samples[:20])
    saved = policy.state()
    first_try = ThermalPolicy(SCALED, state=saved).observe_all(samples[20:30])
    retry = ThermalPolicy(SCALED, state=saved).observe_all(samples[20:30])
    assert [d.to_dict() for d in first_try] == [d.to_dict() for d in retry]
    assert [d.action for d in first_try] == ["warn", "contain"]
    # The same samples delivered again after they were judged: ignored.
    again = ThermalPolicy(SCALED, state=saved)
    again.observe_all(samples[20:30])
    assert again.observe_all(samples[20:30]) == []


def test_state_is_json_and_names_latched_devices():
    policy = ThermalPolicy(SCALED)
    policy.observe_all(trace()[:30])
    state = policy.state()
    assert json.loads(json.dumps(state)) == state
    assert state["latched"] == {"gpu0": "gpu0-e0-1"}
    assert state["devices"]["gpu0"]["episode"] == "gpu0-e0-1"
    assert ThermalPolicy(SCALED, state=state).state() == state
    with pytest.raises(ValueError, match="version"):
        ThermalPolicy(SCALED, state={**state, "version": 99})


# -- hand-made sequences ------------------------------------------------------------------

DEFAULT = PolicyConfig.from_thresholds(ThermalThresholds())


def series(temps, device="gpu0", step=30.0, start=0.0, reasons=()):
    """Samples every `step` seconds; a temperature may be (value, reasons)."""
    out = []
    for i, t in enumerate(temps):
        value, why = t if isinstance(t, tuple) else (t, reasons)
        out.append(
            Sample(ts=at(start + i * step), device=device, source="nvml", temperature_c=value, throttle_reasons=why)
        )
    return out


def actions(decisions):
    return [(d.action, round((d.ts - BASE).total_seconds())) for d in decisions]


def test_config_from_settings():
    assert (
        PolicyConfig(
            warn_c=85, contain_c=90, slowdown_margin_c=3, consecutive_samples=2, hysteresis_c=3, clear_after_s=300
        )
        == DEFAULT
    )
    h200 = DriverThresholds(device="gpu0", slowdown_c=89, shutdown_c=95, gpu_max_c=87)
    assert DEFAULT.contain_line(h200) == 86  # the H200's 89 C slowdown is below the seed's 90 C line
    assert DEFAULT.contain_line(None) == 90
    assert DEFAULT.contain_line(DriverThresholds("gpu0", None, 95, 87)) == 90
    assert DEFAULT.contain_line(DriverThresholds("gpu0", 100, 105, 95)) == 90


def test_k_consecutive_samples_and_the_h200_contain_line():
    h200 = [DriverThresholds(device="gpu0", slowdown_c=89, shutdown_c=95, gpu_max_c=87)]
    # one sample at 86 is noise; two in a row warn (>= 85) and contain (>= 86) together
    assert replay(series([80, 86, 80, 86, 86]), DEFAULT, h200)[0].action == "warn"
    assert actions(replay(series([80, 86, 80, 86, 86]), DEFAULT, h200)) == [("warn", 120), ("contain", 120)]
    assert actions(replay(series([85, 85.5, 85.9, 86, 86]), DEFAULT, h200)) == [("warn", 30), ("contain", 120)]
    # without the driver's limit, 86 C is only a warning
    assert actions(replay(series([86, 86, 86]), DEFAULT)) == [("warn", 30)]


def test_contain_line_below_warn_line_emits_warn_first_and_does_not_clear_while_above_it():
    low = [DriverThresholds(device="gpu0", slowdown_c=84, shutdown_c=90, gpu_max_c=83)]  # line 81
    config = PolicyConfig(clear_after_s=60)
    d = replay(series([82, 82, 80, 80, 80, 80, 77, 77, 77]), config, low)
    assert [(x.action, x.episode) for x in d[:2]] == [
        ("warn", "gpu0-e0-1"),
        ("contain", "gpu0-e0-1"),
    ]
    assert d[0].ts == d[1].ts == at(30)
    # 80 C is below warn - hysteresis (82) but above contain line - hysteresis (78): not over
    assert actions(d) == [("warn", 30), ("contain", 30), ("clear", 240)]


def test_hysteresis_no_flapping_around_the_warn_line():
    config = PolicyConfig(clear_after_s=90)
    temps = [86, 86, 84, 86, 86, 83, 85, 85, 81, 81, 81, 81, 86, 86]
    #         0   30  60  90  120 150 180 210 240 270 300 330 360 390
    # warned at 30; dips to 84/83 are inside the band (>= 82): no clear, no second warn;
    # below 82 from 240, clear at 240 + 90 = 330; a new episode warns at 390.
    d = replay(series(temps), config)
    assert actions(d) == [("warn", 30), ("clear", 330), ("warn", 390)]
    assert d[0].episode == "gpu0-e0-1" and d[2].episode == "gpu0-e0-2"


def test_slowdown_bits_warn_at_any_temperature_but_power_cap_does_not():
    config = PolicyConfig(clear_after_s=60)
    for bit in ("sw_thermal_slowdown", "hw_thermal_slowdown", "hw_slowdown"):
        d = replay(series([40, (41, (bit,)), 40]), config)
        assert actions(d) == [("warn", 30)], bit
        assert bit in d[0].reason and d[0].temperature_c == 41
        assert d[0].episode == "gpu0-e0-1"
    for harmless in ("sw_power_cap", "gpu_idle", "hw_power_brake_slowdown", "sync_boost"):
        assert replay(series([40, (41, (harmless,)), (41, (harmless,))]), config) == [], harmless


def test_slowdown_bit_keeps_the_episode_open_and_no_second_warning():
    config = PolicyConfig(clear_after_s=60)
    hot = ("sw_thermal_slowdown",)
    temps = [(40, hot), (40, hot), (40, hot), 40, 40, 40, (40, hot)]
    #          0         30        60        90  120 150  180
    d = replay(series(temps), config)
    # cool from 90 without the bit; 150 - 90 = 60 s: clear; the bit again at 180: a new episode
    assert actions(d) == [("warn", 0), ("clear", 150), ("warn", 180)]


def test_slowdown_bit_without_temperature_still_warns():
    d = replay(series([(None, ("hw_slowdown",))]), DEFAULT)
    assert actions(d) == [("warn", 0)] and d[0].temperature_c is None
    assert "at unknown" in d[0].reason


def test_missing_temperature_never_triggers_nor_clears():
    config = PolicyConfig(clear_after_s=60)
    assert replay(series([None] * 10), config) == []
    # hot, unknown, hot: the unknown sample does not break the run of hot samples
    assert actions(replay(series([86, None, 86]), config)) == [("warn", 60)]
    # unknown samples are not "stayed cool": the clear timer restarts at the next cool sample
    temps = [86, 86, 70, 70, None, None, None, 70, 70, 70]
    #         0  30  60  90  120  150  180  210 240 270
    assert actions(replay(series(temps), config)) == [("warn", 30), ("clear", 270)]
    # and a long unknown stretch never clears by itself
    assert actions(replay(series([86, 86, 70] + [None] * 20), config)) == [("warn", 30)]


def test_containment_is_latched_until_rearmed():
    config = PolicyConfig(clear_after_s=60)
    policy = ThermalPolicy(config)
    hot, cool = [91, 91], [70, 70, 70]
    d1 = policy.observe_all(series(hot + cool))  # 0..120
    assert actions(d1) == [("warn", 30), ("contain", 30), ("clear", 120)]  # cool from 60 s, + 60 s
    ep1 = d1[0].episode
    assert policy.latched == {"gpu0": ep1} and policy.state()["latched"] == {"gpu0": ep1}
    # a second overheat while latched: a new episode warns, but no second containment
    d2 = policy.observe_all(series(hot + cool, start=300))
    assert actions(d2) == [("warn", 330), ("clear", 420)]
    assert "containment still latched since episode " + ep1 in d2[0].reason
    assert d2[0].episode != ep1
    # the latch survives the cursor
    policy = ThermalPolicy(config, state=json.loads(json.dumps(policy.state())))
    assert policy.is_latched("gpu0")
    assert policy.rearm("gpu1") is False
    assert policy.rearm("gpu0") is True and policy.latched == {}
    d3 = policy.observe_all(series(hot, start=600))
    assert actions(d3) == [("warn", 630), ("contain", 630)]
    assert d3[0].episode == "gpu0-e0-3"


def test_rearm_while_still_hot_contains_again_in_a_new_episode():
    policy = ThermalPolicy(DEFAULT)
    d1 = policy.observe_all(series([95, 95, 95]))
    assert actions(d1) == [("warn", 30), ("contain", 30)]
    assert policy.rearm_all() == ["gpu0"]
    # the re-deployed service heats the card again: K fresh samples, new episode, new run key
    d2 = policy.observe_all(series([95, 95], start=90))
    assert actions(d2) == [("warn", 120), ("contain", 120)]
    assert d2[1].episode == "gpu0-e0-2" != d1[1].episode


def test_devices_are_independent():
    config = PolicyConfig(clear_after_s=30)
    a = series([91, 91, 70, 70], device="gpu0")
    b = series([70, 86, 86, 86], device="gpu1", start=1)
    mixed = sorted(a + b, key=lambda s: s.ts)
    d = replay(mixed, config)
    assert [(x.device, x.action) for x in d] == [
        ("gpu0", "warn"),
        ("gpu0", "contain"),
        ("gpu1", "warn"),
        ("gpu0", "clear"),
    ]
    policy = ThermalPolicy(config)
    policy.observe_all(mixed)
    assert policy.latched == {"gpu0": "gpu0-e0-1"}
    assert policy.open_episodes() == {"gpu1": "gpu1-e0-1"}


def test_out_of_order_samples_are_ignored():
    policy = ThermalPolicy(DEFAULT)
    policy.observe_all(series([86, 86]))
    assert policy.observe(Sample(ts=at(-30), device="gpu0", source="nvml", temperature_c=99)) == []
    assert policy.observe(Sample(ts=at(30), device="gpu0", source="nvml", temperature_c=99)) == []


def test_episode_ids_stay_unique_within_one_second():
    config = PolicyConfig(consecutive_samples=1, clear_after_s=0)
    samples = series([86, 70, 86, 70, 86], step=0.2)
    d = replay(samples, config)
    assert [x.episode for x in d if x.action == "warn"] == ["gpu0-e0-1", "gpu0-e0-2", "gpu0-e0-3"]


def test_episode_ids_come_from_the_state_not_from_the_clock():
    """A tick retried from the same state gives the same id, whatever the samples' times."""
    config = PolicyConfig(clear_after_s=0)
    policy = ThermalPolicy(config, epoch="a1b2")
    policy.observe_all(series([86, 70]))  # one hot sample, not K: the state before the overheat
    saved = json.loads(json.dumps(policy.state()))
    first = ThermalPolicy(config, state=saved).observe_all(series([91, 91], start=100))
    retried = ThermalPolicy(config, state=saved).observe_all(series([91, 91], start=107.5))
    assert [d.episode for d in first] == [d.episode for d in retried] == ["gpu0-a1b2-1", "gpu0-a1b2-1"]
    assert [d.action for d in first] == ["warn", "contain"]
    # A fresh state (a reset cursor) has its own epoch, so its ids cannot repeat old run keys.
    assert ThermalPolicy(config, epoch="ffff").observe_all(series([91, 91]))[0].episode == "gpu0-ffff-1"
    assert saved["epoch"] == "a1b2"


def test_a_clock_stepped_back_is_judged_in_sequence_and_noted():
    policy = ThermalPolicy(DEFAULT)
    seq = iter(range(1, 100))
    for s in series([70, 70]):
        assert policy.observe(s, next(seq)) == []
    # The wall clock is set back an hour; the card then overheats.
    hot = series([95, 95], start=-3600)
    decisions = [d for s in hot for d in policy.observe(s, next(seq))]
    assert [d.action for d in decisions] == ["warn", "contain"]
    notes = policy.take_notes()
    assert len(notes) == 1 and "stepped back 3630 s" in notes[0] and policy.take_notes() == []
    # the same sample number again is a re-delivery: ignored
    assert policy.observe(hot[-1], 3) == []


def test_clear_after_zero_clears_on_the_first_cool_sample():
    d = replay(series([86, 86, 81]), PolicyConfig(clear_after_s=0))
    assert actions(d) == [("warn", 30), ("clear", 60)]
