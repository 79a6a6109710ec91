"""Alert sensors: every failed run, and every job overdue against its dead-man window.

Both post through the thermal alerts' sink (the alerts log, the webhook). The daemon that
runs them can die too: the thermal guard watches it from outside (``alerts.watchdog``).
"""

from datetime import UTC, datetime

from dagster import (
    DefaultSensorStatus,
    Definitions,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from idp_ops.alerts.deadman import Spells
from idp_ops.alerts.run_failure import StepFailure, box_secrets, run_failure_alert
from idp_ops.alerts.sink import AlertSink
from idp_ops.alerts.watchdog import job_verdicts, post_all
from idp_ops.resources import SettingsResource
from idp_ops.settings import SettingsError, load_settings


def _deadman_interval_s() -> int:
    # Read once at import, as thermal_sensor's interval: Dagster needs it when it loads the location.
    try:
        return load_settings().alerts.deadman_interval_s
    except SettingsError:
        return 300


def _step_failures(context: RunFailureSensorContext) -> list[StepFailure]:
    failures = []
    for event in context.get_step_failure_events():
        data = event.event_specific_data
        failures.append(StepFailure(event.step_key, getattr(data, "error", None)))
    return failures


@run_failure_sensor(
    name="run_failure_alert_sensor",
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Alerts every failed run of this location's jobs (alerts log and webhook, once per run): "
    "the job, the failing step and the first line of its error, with secrets masked.",
)
def run_failure_alert_sensor(context: RunFailureSensorContext, settings: SettingsResource):
    cfg, settings_problem = settings.load_or_last_good()
    run = context.dagster_run
    record = context.instance.get_run_record_by_id(run.run_id)
    failed_at = datetime.fromtimestamp(record.end_time, UTC) if record and record.end_time else datetime.now(UTC)
    failure_data = context.failure_event.event_specific_data
    alert = run_failure_alert(
        job=run.job_name,
        run_id=run.run_id,
        failed_at=failed_at,
        steps=_step_failures(context),
        run_error=getattr(failure_data, "error", None),
        run_message=context.failure_event.message or "",
        secrets=box_secrets(cfg.secrets_dir, cfg.key_names),
        partition=run.tags.get("dagster/partition"),
    )
    posted, problem = AlertSink.from_settings(cfg).post(alert, origin="run_failure_alert_sensor")
    for line in (settings_problem, problem):
        if line:
            context.log.warning(line)
    if not posted:
        return SkipReason(f"run {run.run_id} is already alerted")
    context.log.info(f"alerted: {alert.text}")
    return None


@sensor(
    name="deadman_sensor",
    minimum_interval_seconds=_deadman_interval_s(),
    default_status=DefaultSensorStatus.RUNNING,
    description="Alerts once when a job has not succeeded within its dead-man window plus grace "
    "(alerts.deadman: nightly validation 24 h, weekly backup 7 d, thermal ingest 15 min), and once when it "
    "succeeds again. The thermal guard makes the same check from outside Dagster, and watches the daemon.",
)
def deadman_sensor(context: SensorEvaluationContext, settings: SettingsResource) -> SkipReason:
    cfg, settings_problem = settings.load_or_last_good()
    spells = Spells.from_json(context.cursor)
    now = datetime.now(UTC)
    verdicts = job_verdicts(context.instance, cfg, spells.since(now), now)
    alerts = spells.step(verdicts, now)
    posted, problems = post_all(AlertSink.from_settings(cfg), alerts, "deadman_sensor")
    for line in problems + ([settings_problem] if settings_problem else []):
        context.log.warning(line)
    for alert in posted:
        context.log.warning(f"{alert.fields['action']}: {alert.text}")
    context.update_cursor(spells.to_json())
    overdue = [v.subject for v in verdicts if v.spell]
    return SkipReason(
        (f"overdue: {', '.join(overdue)}" if overdue else "no job overdue")
        + f"; {len(posted)} alerts posted"
        + "".join(f"; {v.reason}" for v in verdicts)
    )


defs = Definitions(sensors=[run_failure_alert_sensor, deadman_sensor])
