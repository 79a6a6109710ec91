"""A trace recorded on a real H200 through our own NvmlSource (benchmarks/nvml_live_trace.py), replayed."""

from pathlib import Path

from idp_ops.thermal.policy import PolicyConfig, replay
from idp_ops.thermal.telemetry import CsvReplaySource

TRACE = Path(__file__).resolve().parents[1] / "fixtures" / "h200_live_trace.csv"


def test_our_own_nvml_samples_read_back_with_every_field():
    source = CsvReplaySource(TRACE)
    samples = source.samples()
    assert len(samples) == 119 and not source.problems
    assert {s.device for s in samples} == {"gpu0"} and {s.source for s in samples} == {"csv"}  # replayed
    assert min(s.temperature_c for s in samples) == 34 and max(s.temperature_c for s in samples) == 56
    assert max(s.power_w for s in samples) > 690  # the card's 700 W cap
    assert {r for s in samples for r in s.throttle_reasons} == {"gpu_idle", "sw_power_cap"}
    assert all(s.fan_speed_pct is None for s in samples), "a passive card: NotSupported recorded as null"
    energy = [s.energy_mj for s in samples]
    assert energy == sorted(energy) and (energy[-1] - energy[0]) / 3.6e6 > 5  # Wh over the minute


def test_default_lines_do_nothing_and_scaled_lines_give_one_episode():
    samples = CsvReplaySource(TRACE).samples()
    assert replay(samples, PolicyConfig()) == [], "56 °C is far below 85/90 °C; sw_power_cap is not thermal"
    decisions = replay(samples, PolicyConfig(warn_c=40, contain_c=43, hysteresis_c=2, clear_after_s=3))
    assert [d.action for d in decisions] == ["warn", "contain", "clear"]
    assert len({d.episode for d in decisions}) == 1
