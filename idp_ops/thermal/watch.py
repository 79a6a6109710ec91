"""One watch tick, shared by the Dagster sensor and the standalone guard.

A tick has two halves, and the order between them is the point:

1. ``watch_tick`` samples every source and judges the samples: no file, network or
   database I/O, nothing that can hang or fail on a full disk. It hands back the
   containment requests (new ones, and retries of ones not yet verified).
2. The caller acts on them first (the guard stops the GPU service; the sensor returns
   RunRequests), and only then ``record_tick`` appends the samples to the spool and
   the alerts to the alerts log, each write tolerant of a full disk, and queues the
   webhook posts on a background thread. A slow, refusing or malformed webhook, or an
   ENOSPC, never delays or prevents a stop.

Containment is pending from the decision until the latch names its episode (the latch
is written only after the stop is verified). A failed attempt is retried: the sensor
asks for a new run with a new run key, the guard calls its stop again.

Besides warn/contain/clear the tick raises alerts of its own, once per spell:
``lost`` (a GPU fell off the bus or NVML went away), ``blind`` (a GPU answers but its
temperature cannot be read), ``recovered`` (readable again), ``settings`` (the
settings file stopped loading; the last good settings stay in force) and
``contain_failed`` (one per failed attempt). Neither half opens DuckDB: the spool is
ingested by the `thermal_log` asset.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

# The alert sink lives in idp_ops.alerts.sink (every domain alerts through it); its names stay importable here.
from idp_ops.alerts.sink import AlertSink, _WebhookSender, post_webhook, webhooks  # noqa: F401
from idp_ops.alerts.sink import append_lines as _append_lines
from idp_ops.thermal.policy import Decision, PolicyConfig, ThermalPolicy
from idp_ops.thermal.telemetry import CsvReplaySource, Sample, TelemetryError, TelemetrySource, open_sources

SPOOL_PREFIX = "thermal-"
LOST, BLIND, RECOVERED, SETTINGS, CONTAIN_FAILED = "lost", "blind", "recovered", "settings", "contain_failed"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _is_gpu(sample: Sample) -> bool:
    # CPU (hwmon) samples are logged, not judged: a Ryzen runs at 95 °C by design.
    return sample.source != "hwmon"


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
            by_day.setdefault(sample.ts.astimezone(UTC).date(), []).append(json.dumps(sample.to_dict()))
        if not by_day:
            return 0
        self.directory.mkdir(parents=True, exist_ok=True)
        written = 0
        for day, lines in by_day.items():
            _append_lines(self.path_for(day), lines)
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

    def latest_ts(self, *, gpu_only: bool = False, not_after: datetime | None = None) -> datetime | None:
        """The newest sample's time. ``gpu_only``: GPU samples with a temperature (fresh CPU
        samples must not hide a blind GPU watch). ``not_after``: ignore samples dated later
        (a clock stepped back leaves "future" samples that prove nothing about now)."""
        for day in reversed(self.days()):
            samples, _ = self.read(day)
            times = [
                s.ts
                for s in samples
                if (not gpu_only or (_is_gpu(s) and s.temperature_c is not None))
                and (not_after is None or s.ts <= not_after)
            ]
            if times:
                return max(times)
        return None


# -- alerts ------------------------------------------------------------------


def alert_key(decision: Decision, attempt: int | None = None) -> str:
    return f"{decision.episode}:{decision.action}" + (f":{attempt}" if attempt else "")


# -- one tick ----------------------------------------------------------------


def _new_epoch() -> str:
    return uuid.uuid4().hex[:8]


@dataclass
class WatchState:
    """What a tick needs from the previous one; the sensor keeps it in its cursor."""

    policy: dict = field(default_factory=dict)
    replay_index: int = 0
    alerted: list[str] = field(default_factory=list)  # alert keys already alerted
    latch_seen: bool = False
    # Names this state: episode ids are "<device>-<epoch>-<n>", so a reset cursor never reuses a run key.
    epoch: str = field(default_factory=_new_epoch)
    seq: int = 0  # samples judged so far: the policy's order, immune to wall-clock steps
    # episode -> {"device", "attempt", "decision"}: containments not yet verified by the latch.
    pending: dict[str, dict] = field(default_factory=dict)
    # "device:kind" -> {"n", "since"}: lost / blind / settings spells that are alerted.
    conditions: dict[str, dict] = field(default_factory=dict)
    gpus_seen: list[str] = field(default_factory=list)  # live GPUs ever sampled (their absence is "lost")
    spells: dict[str, int] = field(default_factory=dict)  # "device:kind" -> spells so far (alert ids)

    def to_json(self) -> str:
        return json.dumps(
            {
                "policy": self.policy,
                "replay_index": self.replay_index,
                "alerted": self.alerted[-200:],
                "latch_seen": self.latch_seen,
                "epoch": self.epoch,
                "seq": self.seq,
                "pending": self.pending,
                "conditions": self.conditions,
                "gpus_seen": self.gpus_seen,
                "spells": self.spells,
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> WatchState:
        if not text:
            return cls()
        data = json.loads(text)
        policy = data.get("policy") or {}
        return cls(
            policy=policy,
            replay_index=int(data.get("replay_index", 0)),
            alerted=list(data.get("alerted", [])),
            latch_seen=bool(data.get("latch_seen", False)),
            epoch=str(data.get("epoch") or policy.get("epoch") or _new_epoch()),
            seq=int(data.get("seq", 0)),
            pending=dict(data.get("pending") or {}),
            conditions=dict(data.get("conditions") or {}),
            gpus_seen=list(data.get("gpus_seen") or []),
            spells=dict(data.get("spells") or {}),
        )


@dataclass
class ContainRequest:
    """Stop the GPU services for this episode (attempt n: a new run key per attempt)."""

    episode: str
    device: str
    attempt: int
    decision: Decision

    @property
    def run_key(self) -> str:
        return f"contain:{self.episode}" + (f":attempt-{self.attempt}" if self.attempt > 1 else "")


@dataclass
class TickResult:
    samples: list[Sample]
    decisions: list[Decision]  # what to alert: policy decisions and the watch's own alerts
    to_contain: list[ContainRequest]
    skipped: list[str]
    notes: list[str]  # worth a log line, not an alert (a clock step)
    failed_sources: list[TelemetrySource]  # sources that raised: the caller reopens them
    state: WatchState
    problems: list[str] = field(default_factory=list)  # filled by record_tick


def replay_source(csv_path: Path, start_index: int) -> CsvReplaySource:
    return CsvReplaySource(csv_path, start_index=start_index)


def _condition(state: WatchState, device: str, kind: str, active: bool, reason: str, ts: datetime) -> list[Decision]:
    """Alert once when a spell starts and once (``recovered``) when it ends."""
    key = f"{device}:{kind}"
    current = state.conditions.get(key)
    if active and current is None:
        n = state.spells[key] = state.spells.get(key, 0) + 1
        state.conditions[key] = {"n": n, "since": ts.isoformat()}
        return [Decision(ts, device, kind, None, reason, f"{device}-{state.epoch}-{kind}{n}")]
    if not active and current is not None:
        del state.conditions[key]
        return [
            Decision(
                ts,
                device,
                RECOVERED,
                None,
                f"{kind} since {current['since']} is over",
                f"{device}-{state.epoch}-{kind}{current['n']}",
            )
        ]
    return []


def watch_tick(
    sources: list[TelemetrySource],
    policy_config: PolicyConfig,
    state: WatchState,
    *,
    latch: dict | None,
    replay: CsvReplaySource | None = None,
    replay_rows: int = 1,
    skipped: Iterable[str] = (),
    settings_problem: str | None = None,
    now: Callable[[], datetime] = _utc_now,
) -> TickResult:
    """Sample and judge; no I/O beyond the sources. ``latch`` is the containment latch file's content."""
    samples: list[Sample] = []
    skipped = list(skipped)
    failed: list[TelemetrySource] = []
    device_errors: dict[str, str] = {}
    for source in sources:
        if hasattr(source, "energy_read_interval_s"):  # NVML: the settings may change while it stays open
            source.energy_read_interval_s = policy_config.energy_read_interval_s
        try:
            samples.extend(source.sample())
        except TelemetryError as exc:
            failed.append(source)
            skipped.append(f"{source.name}: {exc}")
        device_errors.update(getattr(source, "device_errors", {}) or {})
    stamp = now()
    live_gpus = sorted({s.device for s in samples if _is_gpu(s)})
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
        samples.extend(replace(row, ts=stamp - timedelta(milliseconds=len(rows) - 1 - i)) for i, row in enumerate(rows))
    thresholds = [t for source in sources for t in source.thresholds()]
    if replay is not None:
        thresholds += replay.thresholds()

    decisions: list[Decision] = []
    # The watch's own alerts: a GPU that vanished, one that cannot read its temperature, bad settings.
    for device in live_gpus:
        if device not in state.gpus_seen:
            state.gpus_seen.append(device)
    sampled = {s.device for s in samples}
    for device in state.gpus_seen:
        why = device_errors.get(device) or "; ".join(r for r in skipped if r.startswith("nvml")) or "no sample"
        decisions += _condition(state, device, LOST, device not in sampled, f"{device} is not answering: {why}", stamp)
    for sample in samples:
        if _is_gpu(sample) and sample.device in state.gpus_seen:
            decisions += _condition(
                state,
                sample.device,
                BLIND,
                sample.temperature_c is None,
                f"{sample.device} answers but its temperature cannot be read: the watch is blind to it",
                stamp,
            )
    decisions += _condition(state, "settings", SETTINGS, settings_problem is not None, settings_problem or "", stamp)

    policy = ThermalPolicy(policy_config, thresholds, state=state.policy or None, epoch=state.epoch)
    # The latch is the containment's record. A deploy marks it re-armed when it starts the
    # GPU service again (and deletes it once proven): from then on the watch protects again.
    latch_present = latch is not None and not latch.get("rearmed_at")
    if state.latch_seen and not latch_present:
        policy.rearm_all()
    state.latch_seen = latch_present
    if latch_present:
        state.pending.pop(str((latch.get("reading") or {}).get("episode")), None)

    for sample in sorted((s for s in samples if _is_gpu(s)), key=lambda s: s.ts):
        state.seq += 1
        decisions.extend(policy.observe(sample, state.seq))
    state.policy = policy.state()

    for decision in decisions:
        if decision.action == "contain":
            state.pending[decision.episode] = {"device": decision.device, "attempt": 1, "decision": decision.to_dict()}
    return TickResult(
        samples=samples,
        decisions=decisions,
        to_contain=[_request(episode, p) for episode, p in state.pending.items()],
        skipped=skipped,
        notes=policy.take_notes(),
        failed_sources=failed,
        state=state,
    )


def settings_tick(
    settings,
    state: WatchState,
    sources: list[TelemetrySource],
    *,
    skipped: Iterable[str] = (),
    replay: CsvReplaySource | None = None,
    settings_problem: str | None = None,
) -> TickResult:
    """watch_tick with what the settings give it (thresholds, latch, replay rows): the sensor's and the guard's tick."""
    from idp_ops.stack.deploy import read_latch  # the latch is the stack's record

    thermal = settings.thermal
    return watch_tick(
        sources,
        PolicyConfig.from_thresholds(thermal),
        state,
        latch=read_latch(settings),
        replay=replay,
        replay_rows=thermal.replay_rows_per_tick,
        skipped=skipped,
        settings_problem=settings_problem,
    )


def _request(episode: str, pending: dict) -> ContainRequest:
    d = pending["decision"]
    decision = Decision(
        datetime.fromisoformat(d["timestamp"]), d["device"], d["action"], d["temperature_c"], d["reason"], d["episode"]
    )
    return ContainRequest(episode, pending["device"], int(pending["attempt"]), decision)


def retry_failed(result: TickResult, outcome: Callable[[ContainRequest], str | None], now: datetime) -> None:
    """Move each request whose attempt ended without a verified stop to its next attempt.

    ``outcome(request)`` is "failed", "succeeded", or None (not started or still running).
    A succeeded attempt stopped and verified the services: the request is done even if
    the latch has been re-armed since. Each failure is alerted (``contain_failed``).
    """
    state = result.state
    still: list[ContainRequest] = []
    for request in result.to_contain:
        status = outcome(request)
        if status == "succeeded":
            state.pending.pop(request.episode, None)
            continue
        if status == "failed":
            mark_failed(result, request, "ended without a verified stop", now)
        still.append(request)
    result.to_contain = still


def mark_failed(result: TickResult, request: ContainRequest, why: str, now: datetime) -> None:
    """Alert one failed attempt and make the request the next attempt (a new run key)."""
    result.decisions.append(
        Decision(
            now,
            request.device,
            CONTAIN_FAILED,
            request.decision.temperature_c,
            f"containment attempt {request.attempt} for {request.episode} {why}; "
            f"trying again (attempt {request.attempt + 1})",
            request.episode,
        )
    )
    request.attempt += 1
    if request.episode in result.state.pending:
        result.state.pending[request.episode]["attempt"] = request.attempt


def record_tick(result: TickResult, spool: Spool, alerts: AlertSink, *, origin: str) -> list[str]:
    """Spool the samples and log each new alert (webhooks queued). Never raises; returns problems."""
    problems: list[str] = []
    state = result.state
    for decision in result.decisions:
        attempt = None
        if decision.action == CONTAIN_FAILED:
            attempt = state.pending.get(decision.episode, {}).get("attempt")
        key = alert_key(decision, attempt)
        if key in state.alerted or alerts.already_logged(key, origin=origin):
            continue
        state.alerted.append(key)
        problem = alerts.emit(decision, origin=origin, key=key)
        if problem:
            problems.append(problem)
    try:
        spool.append(result.samples)
    except OSError as exc:
        problems.append(f"thermal spool {spool.directory} not written ({len(result.samples)} samples lost): {exc}")
    result.problems = problems
    return problems


def alert_failed_attempt(settings, reading: dict, origin: str) -> Callable[[int, str], None]:
    """An ``on_failed_attempt`` for stack.contain: each failed stop inside a run is an alert."""
    sink = AlertSink(settings.alerts_log, settings.thermal.webhook_url, settings.thermal.webhook_timeout_s)
    episode = reading.get("episode") or "manual"
    run_attempt = reading.get("attempt", 1)

    def alert(attempt: int, error: str) -> None:
        decision = Decision(
            _utc_now(),
            reading.get("device") or "gpu",
            CONTAIN_FAILED,
            reading.get("temperature_c"),
            f"stop attempt {attempt} of containment attempt {run_attempt} failed, retrying: {error}",
            episode,
        )
        sink.emit(decision, origin=origin, key=f"{episode}:{CONTAIN_FAILED}:{run_attempt}.{attempt}")

    return alert


# -- live sources ------------------------------------------------------------


class LiveSources:
    """NVML and hwmon for a long-lived process: opened once, NVML retried every tick while missing.

    ``nvmlInit`` costs ~9 ms where a GPU is present and fails in about a millisecond
    where none is; a driver that comes back (or one that was not loaded yet at boot)
    is picked up by the next tick.
    """

    def __init__(self, opener: Callable[..., tuple[list[TelemetrySource], list[str]]] = open_sources):
        self._open = opener
        self._nvml: TelemetrySource | None = None
        self._hwmon: list[TelemetrySource] | None = None
        self._skipped: list[str] = []

    def current(self) -> tuple[list[TelemetrySource], list[str]]:
        skipped: list[str] = []
        if self._nvml is None:
            opened, reasons = self._open(enable_nvml=True, enable_hwmon=False)
            self._nvml = next(iter(opened), None)
            skipped += [r for r in reasons if not r.startswith("hwmon")]
        if self._hwmon is None:
            self._hwmon, reasons = self._open(enable_nvml=False, enable_hwmon=True)
            self._skipped = [r for r in reasons if not r.startswith("nvml")]
        sources = ([self._nvml] if self._nvml else []) + list(self._hwmon)
        return sources, skipped + self._skipped

    def drop(self, failed: Iterable[TelemetrySource]) -> None:
        for source in failed:
            # Closing a source whose driver is gone fails too; it is reopened next tick anyway.
            with contextlib.suppress(TelemetryError):
                source.close()
            if source is self._nvml:
                self._nvml = None
            elif self._hwmon is not None and source in self._hwmon:
                self._hwmon = None

    def close(self) -> None:
        self.drop(([self._nvml] if self._nvml else []) + list(self._hwmon or []))


# -- the guard ---------------------------------------------------------------


def run_guard(
    settings,
    *,
    contain: Callable[[ContainRequest], object],
    stop: threading.Event,
    log: Callable[[str], None] = print,
    interval_s: float | None = None,
    max_ticks: int | None = None,
    reload: Callable[[], tuple[object, str | None]] | None = None,
    watch_dagster: bool = True,
    dagster_check_s: float | None = None,
) -> WatchState:
    """The thermal guard: the same sources and policy in a loop, acting without Dagster.

    ``contain`` must stop and verify (raise on failure); a failed stop is alerted and tried
    again on the next tick. ``reload`` re-reads the settings each tick (the last good ones
    stay in force when the file stops loading).

    ``watch_dagster``: on a thread of its own, also check the Dagster instance (DAGSTER_HOME or
    ``alerts.dagster_home``) every ``dagster_check_s`` (default ``alerts.guard_check_interval_s``):
    jobs overdue against their dead-man windows, and "scheduler_down" when the daemon stops
    beating. Nothing it does (an unreadable instance, a slow query) reaches the thermal loop.
    """
    from idp_ops.alerts.watchdog import DagsterWatch  # the alerts domain; no Dagster import until an instance exists

    replaying = settings.thermal.replay_csv is not None
    live = None if replaying else LiveSources()
    replay = replay_source(settings.thermal.replay_csv, 0) if replaying else None
    state = WatchState()
    ticks = 0
    current = {"settings": settings}
    watch_stop = threading.Event()
    watcher = DagsterWatch(lambda: current["settings"], log=log) if watch_dagster else None

    def check_every() -> float:
        return dagster_check_s if dagster_check_s is not None else current["settings"].alerts.guard_check_interval_s

    watch_thread = watcher.start(watch_stop, check_every) if watcher else None
    try:
        while not stop.is_set():
            started = time.monotonic()
            settings_problem = None
            if reload is not None:
                settings, settings_problem = reload()
                current["settings"] = settings
            thermal = settings.thermal
            interval = interval_s if interval_s is not None else thermal.guard_interval_s
            sources, skipped = live.current() if live else ([], [])
            try:
                result = settings_tick(
                    settings, state, sources, skipped=skipped, replay=replay, settings_problem=settings_problem
                )
                state = result.state
                for request in result.to_contain:
                    log(
                        f"CONTAIN {request.device} at {request.decision.temperature_c} °C "
                        f"(attempt {request.attempt}): {request.decision.reason}"
                    )
                    try:
                        contain(request)
                        state.pending.pop(request.episode, None)
                    except Exception as exc:  # any failure: alert, keep it pending, try again next tick
                        why = f"failed: {type(exc).__name__}: {exc}"
                        log(f"containment attempt {request.attempt} {why}")
                        mark_failed(result, request, why, _utc_now())
                problems = record_tick(
                    result,
                    Spool(settings.thermal_spool_dir),
                    AlertSink(settings.alerts_log, thermal.webhook_url, thermal.webhook_timeout_s),
                    origin="guard",
                )
                for line in result.notes + problems:
                    log(line)
                for decision in result.decisions:
                    if decision.action != "contain":
                        log(f"{decision.action} {decision.device}: {decision.reason}")
                if live:
                    live.drop(result.failed_sources)
            except Exception as exc:  # the guard must outlive any one bad tick (driver hiccup, full disk)
                log(f"tick failed: {type(exc).__name__}: {exc}")
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                break
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
    finally:
        watch_stop.set()
        if watch_thread is not None:
            watch_thread.join(timeout=10)  # a hung instance read is a daemon thread: it does not hold the exit
            if not watch_thread.is_alive():
                watcher.close()
        if live:
            live.close()
        webhooks.flush(timeout_s=10)
    return state
