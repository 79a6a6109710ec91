"""The alert sink every domain shares: one JSONL alerts log, and a webhook posted off the caller's thread.

An alert is appended to the log (line-sized, fsynced, tolerant of a full disk) before its
webhook is queued; the post runs on one background thread per process, each with a
timeout, and a delivery failure is appended to the same log as a ``webhook_failed`` line.
Nothing here raises into the caller: a thermal tick or a sensor must never wait on a webhook.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx


def _utc_now() -> datetime:
    return datetime.now(UTC)


def append_lines(path: Path, lines: list[str]) -> None:
    """Append whole lines; on failure (ENOSPC) cut the file back so no torn line is left."""
    with path.open("a") as handle:
        before = handle.tell()
        try:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            with contextlib.suppress(OSError):  # the original error is the one worth raising
                handle.truncate(before)
            raise


class _WebhookSender:
    """One background thread per process posts the webhooks, in order, each with a timeout.

    The watch never waits for it: an alert is in the alerts log before it is queued,
    and a delivery failure is appended to the same log.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: tuple) -> bool:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="idp-ops-webhook", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            return False

    def _run(self) -> None:
        while True:
            url, payload, timeout_s, on_error = self._queue.get()
            try:
                error = post_webhook(url, payload, timeout_s)
                if error:
                    on_error(error)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued post is done (tests, and the guard on exit)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks


webhooks = _WebhookSender()


def post_webhook(url: str, payload: dict, timeout_s: float) -> str | None:
    """POST one alert; returns what went wrong, never raises."""
    try:
        response = httpx.post(url, json=payload, timeout=timeout_s)
        if response.status_code >= 400:
            return f"webhook answered {response.status_code}"
    # InvalidURL is not an HTTPError; a malformed URL can also surface as ValueError.
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError) as exc:
        return f"webhook failed: {type(exc).__name__}: {exc}"
    return None


class _Decision(Protocol):
    """What a thermal Decision offers the sink (the sink does not depend on the thermal domain)."""

    action: str
    device: str
    temperature_c: float | None
    reason: str
    episode: str

    def to_dict(self) -> dict[str, Any]: ...


def decision_key(decision: _Decision) -> str:
    return f"{decision.episode}:{decision.action}"


@dataclass(frozen=True)
class Alert:
    """One alert of any domain: ``fields`` is its log record less key/origin/logged_at (it holds ``action``)."""

    key: str
    fields: dict[str, Any]
    title: str
    text: str


@dataclass
class AlertSink:
    log_path: Path
    webhook_url: str | None = None
    webhook_timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings) -> AlertSink:
        """The box's sink: its alerts log and the webhook the thermal settings name."""
        return cls(settings.alerts_log, settings.thermal.webhook_url, settings.thermal.webhook_timeout_s)

    def already_logged(self, key: str, *, origin: str | None, tail_bytes: int = 256 * 1024) -> bool:
        """Whether this alert is in the recent log (a retried tick must not alert twice).

        ``origin=None`` matches the key from any origin: the dead-man and scheduler alerts
        are raised by the deadman sensor and the guard alike, and must be posted once."""
        try:
            size = self.log_path.stat().st_size
            with self.log_path.open("rb") as handle:
                handle.seek(max(0, size - tail_bytes))
                tail = handle.read().decode(errors="replace")
        except OSError:
            return False
        for line in tail.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the first line of the tail may be cut
            if not isinstance(record, dict):
                continue
            logged = record.get("key") or f"{record.get('episode')}:{record.get('action')}"
            if logged == key and (origin is None or record.get("origin") == origin):
                return True
        return False

    def emit(self, decision: _Decision, *, origin: str, key: str | None = None) -> str | None:
        """Log one thermal alert and queue its webhook; returns what went wrong writing the log. Never raises."""
        title = f"idp-ops {decision.action}: {decision.device}" + (
            f" at {decision.temperature_c} °C" if decision.temperature_c is not None else ""
        )
        return self.emit_record(
            decision.to_dict(), key=key or decision_key(decision), origin=origin, title=title, text=decision.reason
        )

    def emit_record(self, fields: dict[str, Any], *, key: str, origin: str, title: str, text: str) -> str | None:
        """Log one alert of any domain (``fields`` must hold ``action``) and queue its webhook.

        The log line is ``fields`` plus ``key``, ``origin`` and ``logged_at``; the webhook's
        body is that line plus ``title`` and ``text`` (``title: text``). Never raises."""
        record = {**fields, "key": key, "origin": origin, "logged_at": _utc_now().isoformat()}
        problem = None
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            append_lines(self.log_path, [json.dumps(record, default=str)])
        except OSError as exc:
            problem = f"alerts log {self.log_path} not written: {exc}"
        if self.webhook_url:
            payload = {**record, "title": title, "text": f"{title}: {text}"}
            queued = webhooks.submit((self.webhook_url, payload, self.webhook_timeout_s, self._delivery_failed(record)))
            if not queued:
                problem = (problem + "; " if problem else "") + "webhook queue full: alert not posted"
        return problem

    def post(self, alert: Alert, *, origin: str) -> tuple[bool, str | None]:
        """Log and post ``alert`` unless its key is in the recent log from any origin (a re-evaluated
        sensor, or the sensor and the guard seeing the same spell). Returns (posted, problem)."""
        if self.already_logged(alert.key, origin=None):
            return False, None
        return True, self.emit_record(alert.fields, key=alert.key, origin=origin, title=alert.title, text=alert.text)

    def _delivery_failed(self, record: dict) -> Callable[[str], None]:
        def note(error: str) -> None:
            failure = {
                "action": "webhook_failed",
                "key": record["key"],
                "origin": record["origin"],
                "error": error,
                "logged_at": _utc_now().isoformat(),
            }
            with contextlib.suppress(OSError):  # nowhere left to report it; the alert itself is logged
                append_lines(self.log_path, [json.dumps(failure)])

        return note
