"""Dead-man checks against a Dagster instance: shared by deadman_sensor and the thermal guard.

Inside Dagster, deadman_sensor judges the jobs' last successes. When the daemon itself is
dead nothing inside Dagster runs, so the guard (outside Dagster) runs ``DagsterWatch`` on a
thread of its own: the same job judgments plus the daemon's heartbeats. The thread never
touches the guard's thermal loop: an instance that cannot be read, a locked SQLite file or
a slow query is reported in the guard's log and tried again on the next check.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from idp_ops.alerts import instance as dagster_instance
from idp_ops.alerts.deadman import Spells, Verdict, judge_daemon, judge_job, windows_s
from idp_ops.alerts.sink import Alert, AlertSink

GUARD_ORIGIN = "guard"
TICK_SENSOR = "thermal_sensor"  # ticks every 30 s while the daemon lives: its age is shown beside the heartbeats


def _utc_now() -> datetime:
    return datetime.now(UTC)


def job_verdicts(instance, settings, since: datetime, now: datetime) -> list[Verdict]:
    """One verdict per dead-man window in the settings, from the instance's successful runs."""
    windows = settings.alerts.deadman
    successes = dagster_instance.last_successes(instance, [w.job for w in windows])
    verdicts = []
    for window in windows:
        window_s, grace_s = windows_s(window.window_h, window.grace_h)
        verdicts.append(
            judge_job(
                window.job,
                window_s=window_s,
                grace_s=grace_s,
                last_success=successes[window.job],
                watching_since=since,
                now=now,
            )
        )
    return verdicts


def post_all(sink: AlertSink, alerts: list[Alert], origin: str) -> tuple[list[Alert], list[str]]:
    """Post each alert not already in the log (from any origin); (posted, problems)."""
    posted, problems = [], []
    for alert in alerts:
        sent, problem = sink.post(alert, origin=origin)
        if sent:
            posted.append(alert)
        if problem:
            problems.append(problem)
    return posted, problems


class DagsterWatch:
    """The guard's dead-man and daemon-liveness checks; ``check`` is one pass, ``start`` runs them on a thread."""

    def __init__(
        self,
        settings_of: Callable[[], object],
        *,
        log: Callable[[str], None] = print,
        origin: str = GUARD_ORIGIN,
        now: Callable[[], datetime] = _utc_now,
    ):
        self._settings_of = settings_of
        self._log = log
        self._origin = origin
        self._now = now
        self.spells = Spells()
        self._instance = None
        self._home = None
        self._last_note: str | None = None

    def _note(self, line: str) -> None:
        # Said once until something else is said: a check every 30 s must not flood the guard's log.
        if line != self._last_note:
            self._last_note = line
            self._log(line)

    def _open(self, home):
        if self._instance is None or self._home != home:
            self.close()
            self._instance, self._home = dagster_instance.open_instance(home), home
        return self._instance

    def check(self) -> list[Alert]:
        """One pass: judge the jobs and the daemon, post what starts or ends a spell. Returns those alerts."""
        settings = self._settings_of()
        home, why = dagster_instance.instance_home(settings.alerts.dagster_home)
        if home is None:
            self._note(f"{why}: the guard checks neither the scheduler nor the dead-man windows")
            return []
        instance = self._open(home)
        now = self._now()
        since = self.spells.since(now)
        verdicts = job_verdicts(instance, settings, since, now)
        beats = dagster_instance.daemon_heartbeats(instance)
        if beats:
            tick = dagster_instance.last_sensor_tick(instance, TICK_SENSOR)
            verdicts.append(
                judge_daemon(
                    beats,
                    stale_after_s=settings.alerts.daemon_stale_after_s,
                    watching_since=since,
                    now=now,
                    last_tick=(TICK_SENSOR, tick) if tick else None,
                )
            )
        else:
            self._note(f"the Dagster instance at {home} requires no daemon: its liveness is not checked")
        alerts = self.spells.step(verdicts, now)
        posted, problems = post_all(AlertSink.from_settings(settings), alerts, self._origin)
        for alert in alerts:
            self._log(f"{alert.fields['action']}: {alert.text}" + ("" if alert in posted else " (already alerted)"))
        for problem in problems:
            self._log(problem)
        if not alerts:
            self._note(f"watching the Dagster instance at {home}")
        return alerts

    def run(self, stop: threading.Event, interval_s: Callable[[], float]) -> None:
        while not stop.is_set():
            try:
                self.check()
            except Exception as exc:  # an unreadable instance must not end the watch (nor the guard)
                self._note(
                    f"Dagster check failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                )
                self.close()
            stop.wait(interval_s())

    def start(self, stop: threading.Event, interval_s: Callable[[], float]) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop, interval_s), name="idp-ops-dagster-watch", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        if self._instance is not None:
            instance, self._instance = self._instance, None
            with contextlib.suppress(Exception):  # disposing a broken instance: nothing left to do
                instance.dispose()
