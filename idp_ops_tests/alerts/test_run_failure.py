"""run_failure_alert_sensor on real failed runs (build_run_status_sensor_context), and its one-line error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from dagster import DagsterInstance, Failure, SkipReason, build_run_status_sensor_context, job, op

from idp_ops.alerts.defs import run_failure_alert_sensor
from idp_ops.alerts.run_failure import StepFailure, first_error_line, redact, run_failure_alert
from idp_ops.alerts.sink import webhooks
from idp_ops.resources import SettingsResource
from idp_ops_harness.webhook_recorder import read_alerts

BOX_KEY = "sk-idp-0123456789abcdef"  # written to the box's key file: it must never leave in an alert


@op
def prepare() -> int:
    return 1


@op
def explode(value: int) -> None:
    raise RuntimeError(f"backup volume not mounted; tried with Authorization: Bearer {BOX_KEY}\nsecond line")


@op
def refuse() -> None:
    raise Failure(description="scrub found 3 corrupt files")


@job
def tiny_failing_job():
    explode(prepare())


@job
def two_failures_job():
    explode(prepare())
    refuse()


def failed_run(instance, job_def):
    result = job_def.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return result


def evaluate(config, instance, result):
    context = build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor",
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"settings": SettingsResource(config_file=str(config))},
    )
    return run_failure_alert_sensor(context)


def with_box_key(settings):
    settings.secrets_dir.mkdir(parents=True, exist_ok=True)
    (settings.secrets_dir / "openai_api_key").write_text(BOX_KEY + "\n")


def test_a_failed_run_is_alerted_with_its_step_and_first_error_line_and_no_secret(alert_settings, webhook):
    config, settings = alert_settings(thermal={"webhook_url": webhook.url})
    with_box_key(settings)
    with DagsterInstance.ephemeral() as instance:
        result = failed_run(instance, tiny_failing_job)
        assert evaluate(config, instance, result) is None
    assert webhooks.flush(30)

    (alert,) = read_alerts(settings.alerts_log)
    run_id = result.dagster_run.run_id
    assert alert["action"] == "run_failed" and alert["key"] == f"run_failed:{run_id}"
    assert alert["job"] == "tiny_failing_job" and alert["run_id"] == run_id
    assert alert["step_key"] == "explode" and alert["failed_steps"] == ["explode"]
    assert alert["error"] == "RuntimeError: backup volume not mounted; tried with Authorization: ***"
    assert alert["origin"] == "run_failure_alert_sensor"
    assert datetime.fromisoformat(alert["timestamp"]) <= datetime.now(UTC)
    (posted,) = webhook.received
    assert posted["key"] == alert["key"] and posted["title"] == "idp-ops run_failed: tiny_failing_job"
    assert "step explode" in posted["text"]
    everything = settings.alerts_log.read_text() + json.dumps(webhook.received)
    assert BOX_KEY not in everything and "Traceback" not in everything and "second line" not in everything


def test_a_re_evaluated_sensor_does_not_alert_the_same_run_twice(alert_settings, webhook):
    config, settings = alert_settings(thermal={"webhook_url": webhook.url})
    with DagsterInstance.ephemeral() as instance:
        first = failed_run(instance, tiny_failing_job)
        assert evaluate(config, instance, first) is None
        again = evaluate(config, instance, first)  # a retried tick, the same failure event
        assert isinstance(again, SkipReason) and first.dagster_run.run_id in again.skip_message
        second = failed_run(instance, tiny_failing_job)
        assert evaluate(config, instance, second) is None
    assert webhooks.flush(30)
    alerts = read_alerts(settings.alerts_log)
    assert [a["run_id"] for a in alerts] == [first.dagster_run.run_id, second.dagster_run.run_id]
    assert [p["run_id"] for p in webhook.received] == [first.dagster_run.run_id, second.dagster_run.run_id]


def test_with_several_failed_steps_the_first_is_named_and_the_others_counted(alert_settings):
    config, settings = alert_settings()
    with DagsterInstance.ephemeral() as instance:
        result = failed_run(instance, two_failures_job)
        evaluate(config, instance, result)
    (alert,) = read_alerts(settings.alerts_log)
    assert set(alert["failed_steps"]) == {"explode", "refuse"} and alert["step_key"] == alert["failed_steps"][0]
    assert "and 1 more failed steps" in alert["reason"]
    if alert["step_key"] == "refuse":
        assert alert["error"] == "Failure: scrub found 3 corrupt files"


# -- the one line --------------------------------------------------------------


@dataclass
class Info:
    message: str
    cause: Info | None = None


def test_the_first_error_line_is_the_innermost_causes_first_line():
    wrapped = Info(
        'dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while executing op "x":\n',
        Info("OSError: [Errno 28] No space left on device\n  File ...\n"),
    )
    assert first_error_line(wrapped) == "OSError: [Errno 28] No space left on device"
    assert first_error_line(Info("\n\n"), "Execution of run failed.\nmore") == "Execution of run failed."
    assert first_error_line(None) == "no error message"
    assert first_error_line(Info("dagster._core.definitions.events.Failure: scrub: 3 bad")) == "Failure: scrub: 3 bad"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("401 from http://h/v1?api_key=abc123def456&x=1", "401 from http://h/v1?api_key=***&x=1"),
        ("header x-api-key: abcdef123456 refused", "header x-api-key: *** refused"),
        ("token=zzzzzzzz password: hunter22", "token=*** password: ***"),
        ("rsync://backup:s3cretpw@nas/models failed", "rsync://backup:***@nas/models failed"),
        (f"key {BOX_KEY} rejected", "key *** rejected"),
        ("no secret here: disk full", "no secret here: disk full"),
    ],
)
def test_redact_masks_credentials_and_the_boxs_own_keys(raw, shown):
    assert redact(raw, [BOX_KEY]) == shown


def test_a_run_that_failed_outside_any_step_has_no_step_key():
    alert = run_failure_alert(
        job="weekly_backup_job",
        run_id="0123456789abcdef",
        failed_at=datetime(2026, 3, 1, tzinfo=UTC),
        steps=[],
        run_error=None,
        run_message="Run worker exited unexpectedly (signal 9).",
    )
    assert alert.fields["step_key"] is None and alert.fields["failed_steps"] == []
    assert alert.fields["error"] == "Run worker exited unexpectedly (signal 9)."
    assert "the run (no step failed)" in alert.text
    long = run_failure_alert(
        job="j",
        run_id="r",
        failed_at=datetime(2026, 3, 1, tzinfo=UTC),
        steps=[StepFailure("s", Info("x" * 1000))],
        run_error=None,
        run_message="",
    )
    assert len(long.fields["error"]) == 300
