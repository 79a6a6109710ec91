"""One watch tick, shared by the Dagster sensor and the standalone guard.

A tick samples every source, appends the samples to the spool, runs the
policy, writes each new alert to the alerts log (and the webhook), and hands
back the containment decisions. The sensor turns those into a RunRequest; the
guard stops the GPU service itself. Neither opens DuckDB: the spool is ingested
by the `thermal_log` asset.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable

import httpx

from idp_ops.core.telemetry import CsvReplaySource, Sample, TelemetrySource, open_sources
from idp_ops.core.thermal_policy import Decision, PolicyConfig, ThermalPolicy

SPOOL_PREFIX = "thermal-"


# -- spool -------------------------------------------------------------------


class Spool:
    """Daily JSONL files of samples. Appends are line-sized and fsynced; readers skip a torn last line."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path_for(self, day: date) -> Path:
        return self.directory / f"{SPOOL_PREFIX}{day.isoformat()}.jsonl"

    def append(self, samples: Iterable[Sample]) -> int:
        by_day: dict[date, list[str]] = {}
        for sample in samples:
            by_day.setdefault(sample.ts.astimezone(timezone.utc).date(), []).append(json.dumps(sample.to_dict()))
        if not by_day:
            return 0
        self.directory.mkdir(parents=True, exist_ok=True)
        written = 0
        for day, lines in by_day.items():
            with self.path_for(day).open("a") as handle:
                handle.write("\n".join(lines) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            written += len(lines)
        return written

    def days(self) -> list[date]:
        if not self.directory.is_dir():
            return []
        days = []
        for path in self.directory.glob(f"{SPOOL_PREFIX}*.jsonl"):
            try:
                days.append(date.fromisoformat(path.stem[len(SPOOL_PREFIX) :]))
            except ValueError:
                continue
        return sorted(days)

    def read(self, day: date) -> tuple[list[Sample], list[str]]:
        path = self.path_for(day)
        samples: list[Sample] = []
        problems: list[str] = []
        if not path.exists():
            return samples, problems
        with path.open() as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    samples.append(Sample.from_dict(json.loads(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    problems.append(f"{path.name} line {number}: {exc}")
        return samples, problems

    def latest_ts(self) -> datetime | None:
        for day in reversed(self.days()):
            samples, _ = self.read(day)
            if samples:
                return max(s.ts for s in samples)
        return None


# -- alerts ------------------------------------------------------------------


@dataclass
class AlertSink:
    log_path: Path
    webhook_url: str | None = None
    webhook_timeout_s: float = 5.0

    def already_logged(self, decision: Decision, *, origin: str, tail_bytes: int = 256 * 1024) -> bool:
        """Whether this episode's action is in the recent log (a retried tick must not alert twice)."""
        if not self.log_path.exists():
            return False
        with self.log_path.open("rb") as handle:
            handle.seek(max(0, self.log_path.stat().st_size - tail_bytes))
            tail = handle.read().decode(errors="replace")
        for line in tail.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the first line of the tail may be cut
            if (record.get("episode"), record.get("action"), record.get("origin")) == (
                decision.episode,
                decision.action,
                origin,
            ):
                return True
        return False

    def emit(self, decision: Decision, *, origin: str) -> str | None:
        """Record one alert; returns the webhook error, if any. Never raises for the webhook."""
        record = {**decision.to_dict(), "origin": origin, "logged_at": datetime.now(timezone.utc).isoformat()}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if not self.webhook_url:
            return None
        title = f"idp-ops {decision.action}: {decision.device} at {decision.temperature_c} °C"
        try:
            response = httpx.post(
                self.webhook_url,
                json={**record, "title": title, "text": f"{title}: {decision.reason}"},
                timeout=self.webhook_timeout_s,
            )
            if response.status_code >= 400:
                return f"webhook answered {response.status_code}"
        except httpx.HTTPError as exc:
            return f"webhook failed: {type(exc).__name__}: {exc}"
        return None


# -- one tick ----------------------------------------------------------------


@dataclass
class WatchState:
    """What a tick needs from the previous one; the sensor keeps it in its cursor."""

    policy: dict = field(default_factory=dict)
    replay_index: int = 0
    alerted: list[str] = field(default_factory=list)  # "episode:action" already alerted
    latch_seen: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {"policy": self.policy, "replay_index": self.replay_index, "alerted": self.alerted[-200:], "latch_seen": self.latch_seen}
        )

    @classmethod
    def from_json(cls, text: str | None) -> WatchState:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            policy=data.get("policy") or {},
            replay_index=int(data.get("replay_index", 0)),
            alerted=list(data.get("alerted", [])),
            latch_seen=bool(data.get("latch_seen", False)),
        )


@dataclass
class TickResult:
    samples: list[Sample]
    decisions: list[Decision]
    to_contain: list[Decision]
    alert_errors: list[str]
    skipped: list[str]
    state: WatchState


def replay_source(csv_path: Path, start_index: int) -> CsvReplaySource:
    return CsvReplaySource(csv_path, start_index=start_index)


def watch_tick(
    sources: list[TelemetrySource],
    policy_config: PolicyConfig,
    state: WatchState,
    spool: Spool,
    alerts: AlertSink,
    *,
    latch_present: bool,
    origin: str,
    replay: CsvReplaySource | None = None,
    replay_rows: int = 1,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> TickResult:
    """Sample, spool, judge, alert. Containment decisions are returned for the caller to act on."""
    samples: list[Sample] = []
    skipped: list[str] = []
    for source in sources:
        samples.extend(source.sample())
    if replay is not None:
        # Replayed rows are re-stamped as if sampled during this tick (1 ms apart, the
        # last at now): the spool, the freshness check and the containment reading
        # then describe this box, as live samples would.
        rows: list[Sample] = []
        for _ in range(replay_rows):
            row = replay.sample()
            if not row:
                skipped.append(f"replay: {replay.path.name} exhausted at row {state.replay_index}")
                break
            rows.extend(row)
            state.replay_index += 1
        stamp = now()
        samples.extend(
            replace(row, ts=stamp - timedelta(milliseconds=len(rows) - 1 - i)) for i, row in enumerate(rows)
        )
    thresholds = [t for source in sources for t in source.thresholds()]
    if replay is not None:
        thresholds += replay.thresholds()
    policy = ThermalPolicy(policy_config, thresholds, state=state.policy or None)
    # The latch file is the operator's: a deploy deletes it to re-arm.
    if state.latch_seen and not latch_present:
        policy.rearm_all()
    state.latch_seen = latch_present

    spool.append(samples)
    decisions: list[Decision] = []
    # CPU (hwmon) samples are logged, not judged: a Ryzen runs at 95 °C by design,
    # and the GPU lines must not stop the GPU service because of the CPU.
    for sample in sorted((s for s in samples if s.source != "hwmon"), key=lambda s: s.ts):
        decisions.extend(policy.observe(sample))
    state.policy = policy.state()

    alert_errors = []
    for decision in decisions:
        key = f"{decision.episode}:{decision.action}"
        if key in state.alerted or alerts.already_logged(decision, origin=origin):
            continue
        state.alerted.append(key)
        error = alerts.emit(decision, origin=origin)
        if error:
            alert_errors.append(error)
    return TickResult(
        samples=samples,
        decisions=decisions,
        to_contain=[d for d in decisions if d.action == "contain"],
        alert_errors=alert_errors,
        skipped=skipped,
        state=state,
    )


# -- the guard ---------------------------------------------------------------


def run_guard(
    settings,
    *,
    contain: Callable[[Decision], object],
    stop: threading.Event,
    log: Callable[[str], None] = print,
    interval_s: float | None = None,
    max_ticks: int | None = None,
) -> WatchState:
    """The thermal guard: the same sources and policy in a loop, acting without Dagster."""
    from idp_ops.core.stack import read_latch

    thermal = settings.thermal
    interval = interval_s if interval_s is not None else thermal.guard_interval_s
    replaying = thermal.replay_csv is not None
    sources, skipped = open_sources(enable_nvml=not replaying, enable_hwmon=True)
    for reason in skipped:
        log(f"telemetry: {reason}")
    if not sources and not replaying:
        log("no telemetry source available; the guard keeps retrying every interval")
    replay = replay_source(thermal.replay_csv, 0) if replaying else None
    spool = Spool(settings.thermal_spool_dir)
    alerts = AlertSink(settings.alerts_log, thermal.webhook_url, thermal.webhook_timeout_s)
    state = WatchState()
    config = PolicyConfig.from_thresholds(thermal)
    ticks = 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            if not sources and not replaying:
                sources, skipped = open_sources(enable_nvml=True, enable_hwmon=True)
            try:
                result = watch_tick(
                    sources,
                    config,
                    state,
                    spool,
                    alerts,
                    latch_present=read_latch(settings) is not None,
                    origin="guard",
                    replay=replay,
                    replay_rows=thermal.replay_rows_per_tick,
                )
                state = result.state
                for error in result.alert_errors:
                    log(f"alert delivery: {error}")
                for decision in result.to_contain:
                    log(f"CONTAIN {decision.device} at {decision.temperature_c} °C: {decision.reason}")
                    contain(decision)
                for decision in result.decisions:
                    if decision.action != "contain":
                        log(f"{decision.action} {decision.device} at {decision.temperature_c} °C: {decision.reason}")
            except Exception as exc:  # the guard must outlive any one bad tick (driver hiccup, full disk)
                log(f"tick failed: {type(exc).__name__}: {exc}")
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                break
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
    finally:
        for source in sources:
            source.close()
    return state
