"""Schedules: what runs unattended, and when."""

import os
from datetime import timedelta

from dagster import DefaultScheduleStatus, RunRequest, ScheduleDefinition, ScheduleEvaluationContext, schedule

from idp_ops.jobs import thermal_ingest_job, weekly_backup_job


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


# Settings are loaded per run, not at import, so the schedule's timezone comes from
# the same variable the settings read (IDP_TIMEZONE), defaulting like them to UTC.
SCHEDULE_TIMEZONE = os.environ.get("IDP_TIMEZONE", "UTC")

weekly_backup_schedule = ScheduleDefinition(
    name="weekly_backup_schedule",
    job=weekly_backup_job,
    cron_schedule="0 3 * * 0",  # Sunday 03:00
    execution_timezone=SCHEDULE_TIMEZONE,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Weekly verified snapshot of the model store.",
)

schedules: list = [weekly_backup_schedule, thermal_ingest_schedule]
