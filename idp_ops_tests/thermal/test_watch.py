"""The watch tick without Dagster: lost and blind GPUs, NVML coming back, clock steps, the spool.

NVML cannot run here (no NVIDIA GPU), so the NVML cases drive the real NvmlSource and
watch code through the H200 stand-in (real pynvml constants and error classes, the
recorded H200 answers); everything else is real files.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pynvml

from idp_ops.thermal.policy import PolicyConfig
from idp_ops.thermal.telemetry import NvmlSource, Sample, TelemetryError
from idp_ops.thermal.watch import AlertSink, LiveSources, Spool, WatchState, record_tick, watch_tick
from idp_ops_harness.nvml_stand_in import StandInNvml

CONFIG = PolicyConfig(warn_c=85, contain_c=90, consecutive_samples=2, clear_after_s=60)
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class TwoGpus(StandInNvml):
    """Two H200s; ``lost`` devices answer GPU_IS_LOST, ``blind`` ones cannot read their temperature."""

    def __init__(self):
        super().__init__(devices=2)
        self.lost: set[int] = set()
        self.blind: set[int] = set()
        self.temps = {0: 40, 1: 40}

    def _nvmlDeviceGetTemperature(self, handle, sensor):
        index = handle[1]
        if index in self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if index in self.blind:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        return self.temps[index]


class Clock:
    def __init__(self, start=T0):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


def opener_for(nvml_box: dict, clock):
    """open_sources as the watch calls it, with NVML present only while nvml_box["nvml"] is set."""

    def opener(*, enable_nvml=True, enable_hwmon=True):
        if not enable_nvml:
            return [], ["nvml: disabled", "hwmon: disabled"]
        if nvml_box.get("nvml") is None:
            return [], ["nvml: no NVIDIA device: NVML Shared Library Not Found"]
        return [NvmlSource(nvml=nvml_box["nvml"], clock=clock)], []

    return opener


def tick(live, state, clock, tmp_path, latch=None):
    sources, skipped = live.current()
    result = watch_tick(sources, CONFIG, state, latch=latch, skipped=skipped, now=clock)
    record_tick(result, Spool(tmp_path / "spool"), AlertSink(tmp_path / "alerts.jsonl"), origin="test")
    live.drop(result.failed_sources)
    clock.advance(30)
    return result


def alerts(tmp_path):
    path = tmp_path / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_nvml_absent_at_start_is_reopened_on_a_later_tick(tmp_path):
    clock, box = Clock(), {}
    live, state = LiveSources(opener_for(box, clock)), WatchState()
    result = tick(live, state, clock, tmp_path)
    assert result.samples == [] and any("Library Not Found" in r for r in result.skipped)
    box["nvml"] = TwoGpus()  # the driver finished loading after boot
    result = tick(live, state, clock, tmp_path)
    assert sorted(s.device for s in result.samples) == ["gpu0", "gpu1"]
    assert alerts(tmp_path) == [], "a box that never had a GPU is not alerted about it"


def test_a_gpu_off_the_bus_is_alerted_and_the_others_keep_being_judged(tmp_path):
    clock, box = Clock(), {"nvml": TwoGpus()}
    live, state = LiveSources(opener_for(box, clock)), WatchState()
    tick(live, state, clock, tmp_path)
    box["nvml"].lost.add(1)
    box["nvml"].temps[0] = 95  # the other card overheats meanwhile
    first = tick(live, state, clock, tmp_path)
    second = tick(live, state, clock, tmp_path)
    assert {s.device for s in first.samples + second.samples} == {"gpu0"}
    assert [(d.device, d.action) for d in second.decisions if d.action in ("warn", "contain")] == [
        ("gpu0", "warn"),
        ("gpu0", "contain"),
    ]
    lost = [a for a in alerts(tmp_path) if a["action"] == "lost"]
    assert len(lost) == 1 and lost[0]["device"] == "gpu1" and "GPU is lost" in lost[0]["reason"]
    box["nvml"].lost.clear()
    tick(live, state, clock, tmp_path)
    assert [a["action"] for a in alerts(tmp_path) if a["device"] == "gpu1"] == ["lost", "recovered"]


def test_nvml_lost_mid_run_is_alerted_then_reopened(tmp_path):
    clock, box = Clock(), {"nvml": TwoGpus()}
    live, state = LiveSources(opener_for(box, clock)), WatchState()
    tick(live, state, clock, tmp_path)
    box["nvml"].lost = {0, 1}  # the driver went away: every device fails
    dead = tick(live, state, clock, tmp_path)
    assert dead.failed_sources and dead.samples == []
    box["nvml"] = None  # and stays away for a tick: reopening fails
    tick(live, state, clock, tmp_path)
    box["nvml"] = TwoGpus()  # back
    back = tick(live, state, clock, tmp_path)
    assert sorted(s.device for s in back.samples) == ["gpu0", "gpu1"]
    actions = [(a["device"], a["action"]) for a in alerts(tmp_path)]
    assert actions == [("gpu0", "lost"), ("gpu1", "lost"), ("gpu0", "recovered"), ("gpu1", "recovered")]


def test_a_gpu_whose_temperature_cannot_be_read_is_a_blind_alert(tmp_path):
    clock, box = Clock(), {"nvml": TwoGpus()}
    live, state = LiveSources(opener_for(box, clock)), WatchState()
    tick(live, state, clock, tmp_path)
    box["nvml"].blind.add(0)
    for _ in range(3):
        result = tick(live, state, clock, tmp_path)
        assert [s.temperature_c for s in result.samples if s.device == "gpu0"] == [None]
    blind = [a for a in alerts(tmp_path) if a["action"] == "blind"]
    assert len(blind) == 1 and blind[0]["device"] == "gpu0" and "blind" in blind[0]["reason"]


def test_a_clock_stepped_back_an_hour_does_not_blind_the_policy(tmp_path):
    clock, box = Clock(), {"nvml": TwoGpus()}
    live, state = LiveSources(opener_for(box, clock)), WatchState()
    tick(live, state, clock, tmp_path)
    clock.advance(-3600)
    box["nvml"].temps[0] = 95
    first, second = tick(live, state, clock, tmp_path), tick(live, state, clock, tmp_path)
    assert [d.action for d in first.decisions + second.decisions if d.device == "gpu0"] == ["warn", "contain"]
    assert any("stepped back" in note for note in first.notes)


def test_fresh_cpu_samples_do_not_hide_a_blind_gpu_watch(tmp_path):
    spool = Spool(tmp_path)
    spool.append(
        [
            Sample(ts=T0, device="gpu0", source="nvml", temperature_c=50),
            Sample(ts=T0 + timedelta(minutes=10), device="gpu0", source="nvml", temperature_c=None),
            Sample(ts=T0 + timedelta(minutes=20), device="cpu", source="hwmon", temperature_c=60),
            Sample(ts=T0 + timedelta(days=1), device="gpu0", source="nvml", temperature_c=50),  # a clock ahead
        ]
    )
    assert spool.latest_ts() == T0 + timedelta(days=1)
    assert spool.latest_ts(gpu_only=True, not_after=T0 + timedelta(hours=1)) == T0


def test_a_source_that_raises_is_reported_not_fatal(tmp_path):
    class Broken:
        name = "nvml"

        def sample(self):
            raise TelemetryError("NVIDIA driver gone")

        def thresholds(self):
            return []

        def close(self):
            pass

    broken = Broken()
    result = watch_tick([broken], CONFIG, WatchState(), latch=None)
    assert result.failed_sources == [broken] and "nvml: NVIDIA driver gone" in result.skipped
