"""Thermal policy: samples in, warn / contain / clear decisions out. Pure: no I/O, no clock.

Rules (issue 4), per device:
- ``warn`` once the temperature is at/above ``warn_c`` for K consecutive samples
  (K = ``consecutive_samples``), or at ANY temperature on a sample whose clocks-event
  reasons hold a thermal / hardware slowdown bit (``sw_thermal_slowdown``,
  ``hw_thermal_slowdown``, ``hw_slowdown``; not ``sw_power_cap``: a loaded card sits at its
  power cap all the time). The bit needs no K: the driver is already slowing the card down.
- ``contain`` once the temperature is at/above the contain line for K consecutive
  samples; contain line = min(``contain_c``, driver slowdown - ``slowdown_margin_c``).
  A containment in an episode that has not warned yet emits ``warn`` first (same sample).
- A warning opens an episode. Its id is ``f"{device}-{epoch}-{n}"``: ``n`` counts the
  device's episodes and ``epoch`` names the policy state (chosen once when a state is
  first made, kept in it). Both live in the state the sensor carries in its cursor, so a
  tick retried from the same cursor gives the same id and the same run key, whatever
  the wall clock says; a state started afresh (a reset cursor) has a new epoch, so its
  ids never collide with run keys Dagster has already used.
- One ``warn`` and at most one ``contain`` per episode. The episode ends (``clear``) only
  after the temperature has stayed below ``warn_c - hysteresis_c`` for ``clear_after_s``
  (measured between sample timestamps, from the first cool sample). A sample in the
  hysteresis band, at/above the warn line or carrying a slowdown bit restarts that timer.
  No new warning before the episode has ended: that is the anti-flap hysteresis.
  (Where a low driver slowdown puts the contain line below ``warn_c``, the clear line is
  contain line - hysteresis instead, so a card sitting above its contain line never clears.)
- Containment is LATCHED per device: after ``contain`` no further ``contain`` for that
  device, in this or any later episode, until :meth:`ThermalPolicy.rearm` (a person
  re-deploys). Later episodes of a latched device still warn (the reason says it is latched).
  Re-arming a latched device also forgets its episode and crossing runs, so if it is still
  hot it goes through K fresh samples into a new episode (new id, new run key) and is
  contained again: a re-deploy onto a hot card is stopped again, not waved through.
- A sample without temperature (None) neither triggers nor clears. It does not break a run
  of hot samples (hot, None, hot counts as 2: unknown never lowers the guard) and it does
  restart the clear timer (unknown is not "stayed cool").
- Order. Without a sequence number, samples older than (or as old as) the last one seen
  for the device are ignored, so a re-delivered sample changes nothing. The watch passes
  a sequence number (it counts samples in the state): then order is the sequence, and a
  sample whose timestamp is older than the last one is a wall clock stepped back. It is
  judged, the clear timer restarts (a duration across a step means nothing) and a note
  says so: a clock set back an hour must not blind the policy for an hour.
- GPU health (issue 13, judged in health.py on the same samples, once each): a new XID,
  a new uncorrectable ECC error or a pending/failed row remap is a decision whose action
  is its kind (``xid``, ``ecc``, ``remap``, ``retire``) and whose episode is its own,
  ``f"{device}-{epoch}-{kind}{n}"``: one alert per event, never one per tick. An XID that
  means the card is unusable (health.FATAL_XIDS) is also a ``contain`` decision in that
  episode, latched like a thermal one (none while the device is already latched).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from idp_ops.thermal.health import HealthJudge
from idp_ops.thermal.telemetry import THERMAL_REASONS, DriverThresholds, Sample, as_utc, parse_timestamp

STATE_VERSION = 1
DEFAULT_EPOCH = "e0"
# Backward jitter below this (NTP slewing, samples stamped a few ms apart) is not a clock step.
CLOCK_STEP_S = 1.0
WARN, CONTAIN, CLEAR = "warn", "contain", "clear"


@dataclass
class Decision:
    ts: datetime
    device: str
    action: str  # "warn" | "contain" | "clear"
    temperature_c: float | None
    reason: str
    episode: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "timestamp": self.ts.isoformat(),
            "device": self.device,
            "action": self.action,
            "temperature_c": self.temperature_c,
            "reason": self.reason,
            "episode": self.episode,
        }


@dataclass
class PolicyConfig:
    warn_c: float = 85.0
    contain_c: float = 90.0
    slowdown_margin_c: float = 3.0
    consecutive_samples: int = 2
    hysteresis_c: float = 3.0
    clear_after_s: float = 300.0
    # Sampling, not judging, but it comes with the same settings: how often the watch's NVML
    # source reads the ~4 ms energy counter (power is integrated in between; 0: every sample).
    energy_read_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.energy_read_interval_s >= 0:
            raise ValueError(f"energy_read_interval_s must be >= 0, got {self.energy_read_interval_s}")
        if self.consecutive_samples < 1:
            raise ValueError(f"consecutive_samples must be >= 1, got {self.consecutive_samples}")
        if self.hysteresis_c < 0 or self.clear_after_s < 0 or self.slowdown_margin_c < 0:
            raise ValueError("hysteresis_c, clear_after_s and slowdown_margin_c must be >= 0")

    @classmethod
    def from_thresholds(cls, thermal_settings: Any) -> PolicyConfig:
        """From ``settings.thermal`` (ThermalThresholds) or anything with the same attributes."""
        return cls(
            warn_c=float(thermal_settings.warn_c),
            contain_c=float(thermal_settings.contain_c),
            slowdown_margin_c=float(thermal_settings.slowdown_margin_c),
            consecutive_samples=int(thermal_settings.consecutive_samples),
            hysteresis_c=float(thermal_settings.hysteresis_c),
            clear_after_s=float(thermal_settings.clear_after_s),
            energy_read_interval_s=float(getattr(thermal_settings, "energy_read_interval_s", 60.0)),
        )

    @property
    def clear_below_c(self) -> float:
        return self.warn_c - self.hysteresis_c

    def contain_line(self, driver: DriverThresholds | None) -> float:
        if driver is not None and driver.slowdown_c is not None:
            return min(self.contain_c, driver.slowdown_c - self.slowdown_margin_c)
        return self.contain_c

    def describe_contain_line(self, driver: DriverThresholds | None) -> str:
        line = self.contain_line(driver)
        if driver is not None and driver.slowdown_c is not None:
            return (
                f"{line:g} C = min(contain_c {self.contain_c:g}, driver slowdown "
                f"{driver.slowdown_c:g} - margin {self.slowdown_margin_c:g})"
            )
        return f"{line:g} C (contain_c; driver slowdown unknown)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _DeviceState:
    last_ts: datetime | None = None
    warn_run: int = 0
    warn_run_start: datetime | None = None
    contain_run: int = 0
    contain_run_start: datetime | None = None
    cool_since: datetime | None = None
    episode: str | None = None
    warned: bool = False
    contained: bool = False
    episodes: int = 0  # episodes opened so far: the n in the episode id
    last_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, datetime):
                d[k] = v.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _DeviceState:
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in d.items() if k in names}
        for k in ("last_ts", "warn_run_start", "contain_run_start", "cool_since"):
            if isinstance(values.get(k), str):
                values[k] = parse_timestamp(values[k])
        return cls(**values)


def _fmt(t: float | None) -> str:
    return "unknown" if t is None else f"{t:g} C"


class ThermalPolicy:
    def __init__(
        self,
        config: PolicyConfig,
        thresholds: Iterable[DriverThresholds] = (),
        state: dict[str, Any] | None = None,
        *,
        epoch: str = DEFAULT_EPOCH,
    ):
        self.config = config
        self.thresholds = {t.device: t for t in thresholds}
        self._devices: dict[str, _DeviceState] = {}
        self._latched: dict[str, str] = {}  # device -> episode that latched it
        self.epoch = epoch
        # Things worth a log line that are not decisions (a clock step); the caller drains it.
        self.notes: list[str] = []
        self.health = HealthJudge((state or {}).get("health"))
        if state:
            version = state.get("version", STATE_VERSION)
            if version != STATE_VERSION:
                raise ValueError(f"thermal policy state version {version} is not {STATE_VERSION}")
            self._devices = {d: _DeviceState.from_dict(s) for d, s in (state.get("devices") or {}).items()}
            self._latched = dict(state.get("latched") or {})
            self.epoch = str(state.get("epoch") or epoch)

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "devices": {d: s.to_dict() for d, s in sorted(self._devices.items())},
            "latched": dict(sorted(self._latched.items())),
            "health": self.health.state(),
        }

    @property
    def latched(self) -> dict[str, str]:
        """Latched devices -> the episode whose containment latched them."""
        return dict(self._latched)

    def open_episodes(self) -> dict[str, str]:
        return {d: s.episode for d, s in self._devices.items() if s.episode}

    def is_latched(self, device: str) -> bool:
        return device in self._latched

    def rearm(self, device: str) -> bool:
        """Release a latched device (a person re-deployed). True if it was latched.

        The device's open episode and crossing runs are forgotten too: if it is still hot,
        K fresh samples open a new episode (new id) and contain it again.
        """
        if self._latched.pop(device, None) is None:
            return False
        old = self._devices.get(device)
        fresh = _DeviceState(
            last_ts=old.last_ts if old else None,
            episodes=old.episodes if old else 0,
            last_seq=old.last_seq if old else None,
        )
        self._devices[device] = fresh
        return True

    def rearm_all(self) -> list[str]:
        devices = sorted(self._latched)
        for device in devices:
            self.rearm(device)
        return devices

    def contain_line(self, device: str) -> float:
        return self.config.contain_line(self.thresholds.get(device))

    def clear_line(self, device: str) -> float:
        """An episode ends below this: warn_c - hysteresis, or contain line - hysteresis
        where the driver puts the contain line below the warn line."""
        return min(self.config.warn_c, self.contain_line(device)) - self.config.hysteresis_c

    # -- the rules -----------------------------------------------------------------------
    def observe(self, sample: Sample, seq: int | None = None) -> list[Decision]:
        cfg = self.config
        st = self._devices.setdefault(sample.device, _DeviceState())
        ts = as_utc(sample.ts)
        if seq is None:
            if st.last_ts is not None and ts <= st.last_ts:
                return []  # stale or re-delivered: already judged
        else:
            if st.last_seq is not None and seq <= st.last_seq:
                return []  # re-delivered: already judged
            st.last_seq = seq
            if st.last_ts is not None and (st.last_ts - ts).total_seconds() > CLOCK_STEP_S:
                step = (st.last_ts - ts).total_seconds()
                self.notes.append(
                    f"{sample.device}: the wall clock stepped back {step:.0f} s (sample at {ts.isoformat()} after "
                    f"{st.last_ts.isoformat()}); judged in order received, clear timer restarted"
                )
                st.cool_since = None
                st.warn_run_start = ts if st.warn_run_start else None
                st.contain_run_start = ts if st.contain_run_start else None
        st.last_ts = ts
        temp = sample.temperature_c
        line = self.contain_line(sample.device)
        clear_below = self.clear_line(sample.device)
        slowdown_bits = sorted(set(sample.throttle_reasons) & THERMAL_REASONS)

        if temp is not None:
            if temp >= cfg.warn_c:
                st.warn_run += 1
                st.warn_run_start = st.warn_run_start or ts
            else:
                st.warn_run, st.warn_run_start = 0, None
            if temp >= line:
                st.contain_run += 1
                st.contain_run_start = st.contain_run_start or ts
            else:
                st.contain_run, st.contain_run_start = 0, None
        if temp is not None and temp < clear_below and not slowdown_bits:
            st.cool_since = st.cool_since or ts
        else:
            st.cool_since = None

        k = cfg.consecutive_samples
        warn_hot = st.warn_run >= k
        contain_run_hot = st.contain_run >= k
        contain_hot = contain_run_hot and sample.device not in self._latched and not st.contained

        out: list[Decision] = []
        if (warn_hot or slowdown_bits or contain_run_hot) and not st.warned:
            reasons = []
            if warn_hot:
                reasons.append(
                    f"temperature {_fmt(temp)} at/above warn line {cfg.warn_c:g} C for {st.warn_run} samples"
                )
            if contain_run_hot and not warn_hot:
                reasons.append(
                    f"temperature {_fmt(temp)} at/above contain line {line:g} C for {st.contain_run} samples"
                )
            if slowdown_bits:
                reasons.append(f"driver reports {', '.join(slowdown_bits)} at {_fmt(temp)}")
            if st.episode is None:
                st.episode = self._new_episode_id(sample.device, st)
            if sample.device in self._latched:
                reasons.append(f"containment still latched since episode {self._latched[sample.device]}")
            st.warned = True
            out.append(Decision(ts, sample.device, WARN, temp, "; ".join(reasons), st.episode))
        if contain_hot:
            assert st.episode is not None
            st.contained = True
            self._latched[sample.device] = st.episode
            driver = self.thresholds.get(sample.device)
            out.append(
                Decision(
                    ts,
                    sample.device,
                    CONTAIN,
                    temp,
                    f"temperature {_fmt(temp)} at/above contain line {cfg.describe_contain_line(driver)} "
                    f"for {st.contain_run} samples",
                    st.episode,
                )
            )
        elif (
            st.episode is not None
            and st.cool_since is not None
            and (ts - st.cool_since).total_seconds() >= cfg.clear_after_s
        ):
            episode = st.episode
            cool_for = (ts - st.cool_since).total_seconds()
            out.append(
                Decision(
                    ts,
                    sample.device,
                    CLEAR,
                    temp,
                    f"below {clear_below:g} C ({min(cfg.warn_c, line):g} - hysteresis {cfg.hysteresis_c:g}) "
                    f"for {cool_for:g} s (clear_after {cfg.clear_after_s:g} s)"
                    + ("; containment stays latched until re-armed" if sample.device in self._latched else ""),
                    episode,
                )
            )
            st.episode, st.warned, st.contained = None, False, False
            st.warn_run, st.warn_run_start, st.contain_run, st.contain_run_start = 0, None, 0, None
        out.extend(self._health_decisions(sample, ts))
        return out

    def _health_decisions(self, sample: Sample, ts: datetime) -> list[Decision]:
        out: list[Decision] = []
        temp = sample.temperature_c
        for event in self.health.observe(sample):
            episode = f"{sample.device}-{self.epoch}-{event.kind}{event.n}"
            reason = event.reason
            if event.fatal and sample.device in self._latched:
                reason += f"; containment already latched since episode {self._latched[sample.device]}"
            elif event.fatal:
                reason += "; the GPU is unusable: containing the GPU service"
            out.append(Decision(ts, sample.device, event.kind, temp, reason, episode))
            if event.fatal and sample.device not in self._latched:
                self._latched[sample.device] = episode
                out.append(Decision(ts, sample.device, CONTAIN, temp, event.reason, episode))
        return out

    def _new_episode_id(self, device: str, st: _DeviceState) -> str:
        # From the state alone (not from the sample's time): a retried tick gives the same id.
        st.episodes += 1
        return f"{device}-{self.epoch}-{st.episodes}"

    def observe_all(self, samples: Iterable[Sample]) -> list[Decision]:
        out: list[Decision] = []
        for s in samples:
            out.extend(self.observe(s))
        return out

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes


def replay(
    samples: Iterable[Sample], config: PolicyConfig, thresholds: Iterable[DriverThresholds] = ()
) -> list[Decision]:
    """Run a fresh policy over samples (time order per device) and return every decision."""
    return ThermalPolicy(config, thresholds).observe_all(samples)


__all__ = ["CLEAR", "CONTAIN", "WARN", "Decision", "PolicyConfig", "ThermalPolicy", "replay"]
