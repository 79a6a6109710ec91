"""Schedules: what runs unattended, and when."""

from datetime import timedelta

from dagster import DefaultScheduleStatus, RunRequest, ScheduleDefinition, ScheduleEvaluationContext, schedule

from idp_ops.settings import SettingsError, load_settings
from idp_ops.jobs import nightly_validation_job, reports_job, thermal_ingest_job, weekly_backup_job


@schedule(
    job=thermal_ingest_job,
    cron_schedule="*/15 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Ingest today's thermal spool every 15 minutes; shortly after midnight, finish yesterday's.",
)
def thermal_ingest_schedule(context: ScheduleEvaluationContext):
    now = context.scheduled_execution_time
    days = [now.date()]
    if now.hour == 0 and now.minute < 15:
        days.insert(0, (now - timedelta(days=1)).date())
    for day in days:
        key = day.isoformat()
        yield RunRequest(run_key=f"thermal-{key}-{now:%H%M}", partition_key=key)




def _configured_timezone() -> str:
    # Read once at import: Dagster needs the timezone when it loads the location.
    # Invalid settings surface in the runs, with the field's name.
    try:
        return load_settings().timezone
    except SettingsError:
        return "UTC"


SCHEDULE_TIMEZONE = _configured_timezone()


@schedule(
    job=nightly_validation_job,
    cron_schedule="0 2 * * *",
    execution_timezone=SCHEDULE_TIMEZONE,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Nightly at 02:00 (configured timezone): validate whatever stack is up against its criteria.",
)
def nightly_validation_schedule(context: ScheduleEvaluationContext):
    night = context.scheduled_execution_time.date().isoformat()
    return RunRequest(run_key=f"night-{night}", partition_key=night)

weekly_backup_schedule = ScheduleDefinition(
    name="weekly_backup_schedule",
    job=weekly_backup_job,
    cron_schedule="0 3 * * 0",  # Sunday 03:00
    execution_timezone=SCHEDULE_TIMEZONE,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Weekly verified snapshot of the model store.",
)

# After the night's validation and backups, before anyone looks: the day starts with fresh figures.
reports_schedule = ScheduleDefinition(
    name="reports_schedule",
    job=reports_job,
    cron_schedule="0 6 * * *",
    execution_timezone=SCHEDULE_TIMEZONE,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Daily: bandwidth, ceilings, performance/thermal trends and ROI.",
)

schedules: list = [nightly_validation_schedule, weekly_backup_schedule, thermal_ingest_schedule, reports_schedule]
