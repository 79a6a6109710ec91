"""Dagster wiring of the ops platform's housekeeping: one job and its daily schedule (logic: housekeeping.py).

Only the platform's runs carry IDP_OPS_PROJECT (compose/ops/platform_env.py); in the embedded deployment
the job has nothing to prune and says so.
"""

import os

from dagster import (
    Config,
    DefaultScheduleStatus,
    Definitions,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Output,
    ScheduleDefinition,
    in_process_executor,
    job,
    op,
)

from idp_ops.platform.housekeeping import HousekeepingError, housekeep
from idp_ops.resources import SettingsResource


class HousekeepingConfig(Config):
    # Finished run containers are kept this long for `docker logs` / exit codes, then removed.
    keep_days: float = 7.0


@op(
    description="Remove this platform's run containers finished more than keep_days ago, and unused idp-ops/ops images."
)
def prune_platform_leftovers(context: OpExecutionContext, config: HousekeepingConfig, settings: SettingsResource):
    project = os.environ.get("IDP_OPS_PROJECT")
    if not project:
        context.log.info("not a run of the ops platform (no IDP_OPS_PROJECT): nothing to prune")
        yield Output({"platform": None}, metadata={"platform": "none (embedded instance)"})
        return
    origin = context.dagster_run.job_code_origin
    current_image = origin.repository_origin.container_image if origin else None
    engine = settings.load().docker_engine
    try:
        report = housekeep(engine, project, keep_days=config.keep_days, current_image=current_image)
    except HousekeepingError as exc:
        raise Failure(description=str(exc)) from None
    for problem in report.problems:
        context.log.warning(problem)
    context.log.info(
        f"removed {len(report.removed_containers)} run container(s) and {len(report.removed_images)} image(s)"
    )
    yield Output(
        report.as_dict(),
        metadata={
            "platform": project,
            "docker_engine": engine.label(),
            "removed_containers": len(report.removed_containers),
            "kept_finished_containers": report.kept_containers,
            "removed_images": MetadataValue.json(report.removed_images),
            "kept_images": MetadataValue.json(report.kept_images),
        },
    )


@job(executor_def=in_process_executor, description="Prune what the ops platform leaves on the box.")
def platform_housekeeping_job():
    prune_platform_leftovers()


platform_housekeeping_schedule = ScheduleDefinition(
    name="platform_housekeeping_schedule",
    job=platform_housekeeping_job,
    cron_schedule="30 5 * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Daily: remove run containers finished a week ago and superseded idp-ops/ops images.",
)

defs = Definitions(jobs=[platform_housekeeping_job], schedules=[platform_housekeeping_schedule])
