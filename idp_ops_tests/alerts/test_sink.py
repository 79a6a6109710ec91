"""The alert sink, now in idp_ops.alerts: the thermal names still import, and any domain's alert posts once."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from idp_ops.alerts import sink
from idp_ops.alerts.sink import Alert, AlertSink, webhooks
from idp_ops.thermal import watch
from idp_ops.thermal.policy import Decision
from idp_ops_harness.ports import free_port
from idp_ops_harness.webhook_recorder import read_alerts


def test_the_thermal_watch_still_exports_the_same_sink():
    assert watch.AlertSink is sink.AlertSink and watch.webhooks is sink.webhooks
    assert watch.post_webhook is sink.post_webhook and watch._WebhookSender is sink._WebhookSender
    assert watch._append_lines is sink.append_lines


def alert(key="run_failed:abc", action="run_failed"):
    return Alert(key, {"timestamp": "2026-03-01T00:00:00+00:00", "action": action, "job": "j"}, "title", "text")


def test_an_alert_of_any_domain_is_logged_then_posted_once_whatever_its_origin(tmp_path, webhook):
    alerts = AlertSink(tmp_path / "logs" / "alerts.jsonl", webhook.url, 5)
    assert alerts.post(alert(), origin="deadman_sensor") == (True, None)
    assert alerts.post(alert(), origin="guard") == (False, None), "the guard sees the spell the sensor alerted"
    assert alerts.post(alert("overdue:j:never", "overdue"), origin="guard") == (True, None)
    assert webhooks.flush(30)
    logged = read_alerts(alerts.log_path)
    assert [(a["key"], a["origin"]) for a in logged] == [
        ("run_failed:abc", "deadman_sensor"),
        ("overdue:j:never", "guard"),
    ]
    assert all(a["logged_at"] and a["job"] == "j" for a in logged)
    assert [p["text"] for p in webhook.received] == ["title: text", "title: text"]


def test_thermal_dedup_still_matches_its_own_origin_only(tmp_path):
    alerts = AlertSink(tmp_path / "alerts.jsonl")
    decision = Decision(datetime(2026, 3, 1, tzinfo=UTC), "gpu0", "warn", 86.0, "hot", "gpu0-e-1")
    assert alerts.emit(decision, origin="guard") is None
    (record,) = read_alerts(alerts.log_path)
    assert record["key"] == "gpu0-e-1:warn" and record["temperature_c"] == 86.0 and record["device"] == "gpu0"
    assert alerts.already_logged("gpu0-e-1:warn", origin="guard")
    assert not alerts.already_logged("gpu0-e-1:warn", origin="thermal_sensor")
    assert alerts.already_logged("gpu0-e-1:warn", origin=None)


def test_a_refused_webhook_is_a_webhook_failed_line_not_an_exception(tmp_path):
    alerts = AlertSink(tmp_path / "alerts.jsonl", f"http://127.0.0.1:{free_port()}/hook", 2)
    posted, problem = alerts.post(alert(), origin="run_failure_alert_sensor")
    assert posted and problem is None
    assert webhooks.flush(30)
    first, failure = (json.loads(line) for line in alerts.log_path.read_text().splitlines())
    assert first["action"] == "run_failed"
    assert failure["action"] == "webhook_failed" and failure["key"] == "run_failed:abc"
    assert failure["error"].startswith("webhook failed:")


def test_an_unwritable_log_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    alerts = AlertSink(blocker / "alerts.jsonl")
    posted, problem = alerts.post(alert(), origin="guard")
    assert posted and problem and "not written" in problem
