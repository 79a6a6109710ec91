"""Dead-man judgments: a job that has not succeeded within its window, a daemon that stopped beating.

Pure logic on timestamps (no Dagster import): the deadman sensor and the guard read the
instance through ``alerts.instance`` and hand the ages in here. Each condition alerts once
when its spell starts and once when it ends, whichever process sees it first: the alert
keys name the spell by what does not move while it lasts (the last success, the stalest
heartbeat), so the sensor and the guard, or a guard restarted mid-spell, post it once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from idp_ops.alerts.sink import Alert

OVERDUE, RECOVERED, SCHEDULER_DOWN, SCHEDULER_UP = "overdue", "recovered", "scheduler_down", "scheduler_up"
DAEMON = "dagster-daemon"


@dataclass(frozen=True)
class Verdict:
    """One condition's state now: ``spell`` names the bad spell (stable while it lasts), None when fine."""

    subject: str
    spell: str | None
    reason: str
    fields: dict[str, Any]


def _hours(seconds: float) -> float:
    return round(seconds / 3600, 3)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def judge_job(
    job: str,
    *,
    window_s: float,
    grace_s: float,
    last_success: datetime | None,
    watching_since: datetime,
    now: datetime,
) -> Verdict:
    """Overdue when the last success (or, never having succeeded, the start of watching) is
    older than the window plus the grace. A fresh install is not overdue on its first night."""
    reference = last_success if last_success is not None else watching_since
    age = (now - reference).total_seconds()
    limit = window_s + grace_s
    fields = {
        "job": job,
        "last_success": last_success.isoformat() if last_success else None,
        "age_h": _hours(age),
        "window_h": _hours(window_s),
        "grace_h": _hours(grace_s),
    }
    if age <= limit:
        return Verdict(job, None, f"{job} succeeded {_ago(age)} ago (limit {_ago(limit)})", fields)
    since = f"last succeeded {_ago(age)} ago" if last_success else f"has not succeeded in the {_ago(age)} watched"
    reason = (
        f"{job} {since}: its window is {_ago(window_s)} plus {_ago(grace_s)} grace. "
        "Is its schedule running, and did its last runs fail?"
    )
    spell = f"{OVERDUE}:{job}:{last_success.isoformat() if last_success else 'never'}"
    return Verdict(job, spell, reason, fields)


def judge_daemon(
    heartbeats: dict[str, datetime | None],
    *,
    stale_after_s: float,
    watching_since: datetime,
    now: datetime,
    last_tick: tuple[str, datetime] | None = None,
) -> Verdict:
    """Down when any watched daemon's newest heartbeat (``heartbeats``: daemon type -> time,
    None when it never beat) is older than ``stale_after_s``. Before the first heartbeat the
    start of watching stands in, so a daemon starting beside the guard is not down at once."""
    if not heartbeats:
        raise ValueError("judge_daemon needs at least one daemon type to watch")
    ages = {kind: (now - (ts or watching_since)).total_seconds() for kind, ts in heartbeats.items()}
    stalest = max(ages, key=lambda kind: ages[kind])
    stalest_ts = heartbeats[stalest]
    fields: dict[str, Any] = {
        "daemon": DAEMON,
        "last_heartbeat": stalest_ts.isoformat() if stalest_ts else None,
        "daemon_type": stalest,
        "age_s": round(ages[stalest], 1),
        "stale_after_s": stale_after_s,
        "heartbeats": {kind: ts.isoformat() if ts else None for kind, ts in sorted(heartbeats.items())},
    }
    tick = ""
    if last_tick is not None:
        name, ts = last_tick
        fields["last_sensor_tick"] = {"sensor": name, "timestamp": ts.isoformat()}
        tick = f"; last {name} tick {_ago((now - ts).total_seconds())} ago"
    if ages[stalest] <= stale_after_s:
        return Verdict(DAEMON, None, f"{DAEMON} beating (stalest: {stalest} {_ago(ages[stalest])} ago){tick}", fields)
    beat = f"last {stalest} heartbeat {_ago(ages[stalest])} ago" if stalest_ts else f"no {stalest} heartbeat ever"
    reason = (
        f"{DAEMON} is not running ({beat}, limit {_ago(stale_after_s)}){tick}: schedules, sensors, "
        "run queue and thermal_sensor are stopped; the thermal guard still protects the GPU"
    )
    spell = f"{SCHEDULER_DOWN}:{stalest}:{stalest_ts.isoformat() if stalest_ts else 'never'}"
    return Verdict(DAEMON, spell, reason, fields)


@dataclass
class Spells:
    """The open bad spells (subject -> {"spell", "since"}), kept between checks (a sensor cursor, the guard)."""

    open: dict[str, dict[str, str]] = field(default_factory=dict)
    watching_since: str | None = None  # when this watcher first looked (jobs never run are judged from it)

    def since(self, now: datetime) -> datetime:
        if self.watching_since is None:
            self.watching_since = now.isoformat()
        return datetime.fromisoformat(self.watching_since)

    def step(self, verdicts: list[Verdict], now: datetime) -> list[Alert]:
        """The alerts these verdicts call for: one when a spell starts, one when it ends."""
        alerts: list[Alert] = []
        for verdict in verdicts:
            current = self.open.get(verdict.subject)
            if current is not None and current["spell"] != verdict.spell:
                # Over (or replaced by a new spell, e.g. a success nobody saw, then overdue again).
                del self.open[verdict.subject]
                alerts.append(_ended(verdict, current, now))
            if verdict.spell is not None and verdict.subject not in self.open:
                self.open[verdict.subject] = {"spell": verdict.spell, "since": now.isoformat()}
                alerts.append(_started(verdict, now))
        return alerts

    def to_json(self) -> str:
        return json.dumps({"open": self.open, "watching_since": self.watching_since})

    @classmethod
    def from_json(cls, text: str | None) -> Spells:
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except ValueError:
            return cls()  # a cursor from another version: start watching afresh
        return cls(open=dict(data.get("open") or {}), watching_since=data.get("watching_since"))


def _started(verdict: Verdict, now: datetime) -> Alert:
    action = SCHEDULER_DOWN if verdict.subject == DAEMON else OVERDUE
    fields = {"timestamp": now.isoformat(), "action": action, **verdict.fields, "reason": verdict.reason}
    what = "dagster-daemon is down" if action == SCHEDULER_DOWN else f"{verdict.subject} is overdue"
    return Alert(verdict.spell or "", fields, f"idp-ops {action}: {what}", verdict.reason)


def _ended(verdict: Verdict, current: dict[str, str], now: datetime) -> Alert:
    action = SCHEDULER_UP if verdict.subject == DAEMON else RECOVERED
    reason = f"{current['spell']} (alerted at {current['since']}) is over: {verdict.reason}"
    fields = {"timestamp": now.isoformat(), "action": action, **verdict.fields, "reason": reason}
    what = "dagster-daemon is beating again" if action == SCHEDULER_UP else f"{verdict.subject} succeeded again"
    return Alert(f"{current['spell']}:{action}", fields, f"idp-ops {action}: {what}", reason)


def windows_s(window_h: float, grace_h: float) -> tuple[float, float]:
    return timedelta(hours=window_h).total_seconds(), timedelta(hours=grace_h).total_seconds()
