"""Jobs: deploy (keys -> audit -> deployment) and containment (stop the GPU services now)."""


from typing import Optional

from dagster import AssetSelection, Config, Failure, OpExecutionContext, Output, define_asset_job, in_process_executor, job, op

from idp_ops.stack.deploy import ContainmentError
from idp_ops.resources import StackResource

# The run queue (dagster.yaml) limits runs by these tags, not by a global cap:
# - heavy runs (deploy, validation, downloads, backup, restore, reports) at most 2 at once
#   on a 2-core box;
# - runs that change the stack (deploy, validation) one at a time.
# containment_job carries neither and the highest priority: it never waits in the queue.
HEAVY_TAG = {"idp_ops/heavy": "true"}
STACK_EXCLUSIVE_TAG = {"idp_ops/stack": "exclusive", **HEAVY_TAG}
CONTAINMENT_TAGS = {"dagster/priority": "100"}

deploy_job = define_asset_job(
    "deploy_job",
    selection=AssetSelection.groups("stack"),
    description="Generate keys, audit the compose file (blocking on high findings), bring the stack up and prove it. "
    "Also re-arms the thermal containment latch.",
    executor_def=in_process_executor,
    tags=STACK_EXCLUSIVE_TAG,
)


class ContainmentConfig(Config):
    reason: str = "manual containment"
    device: Optional[str] = None
    temperature_c: Optional[float] = None
    sample_timestamp: Optional[str] = None
    # Set by thermal_sensor: which episode and attempt this run is, and the last good
    # settings to fall back to if the settings file stops loading meanwhile.
    episode: Optional[str] = None
    attempt: int = 1
    settings_snapshot: Optional[str] = None


@op(description="Stop the configured GPU services, verify they stopped (retrying a failed stop), then latch "
    "until re-armed by a deploy.")
def stop_gpu_services(context: OpExecutionContext, config: ContainmentConfig, stack: StackResource):
    reading = {
        k: v for k, v in config.model_dump().items() if k not in ("reason", "settings_snapshot") and v is not None
    }
    try:
        report = stack.contain(
            config.reason, reading, log=context.log.warning, settings_snapshot=config.settings_snapshot,
            origin="containment_job",
        )
    except ContainmentError as exc:
        raise Failure(description=str(exc), metadata={"reason": config.reason, "reading": reading}) from None
    metadata = {
        "reason": report.reason,
        "reading": report.reading,
        "stopped": report.stopped,
        "still_running": report.still_running,
        "stop_seconds": report.stop_seconds,
        "contained_at": report.contained_at,
        "attempts": report.attempts,
    }
    context.log.warning(f"contained: {report.stopped} stopped in {report.stop_seconds:.2f} s; deploy again to re-arm")
    yield Output(report.as_dict(), metadata=metadata)


@job(
    executor_def=in_process_executor,
    description="Stop the GPU service(s) before the card overheats.",
    tags=CONTAINMENT_TAGS,
)
def containment_job():
    stop_gpu_services()


weekly_backup_job = define_asset_job(
    "weekly_backup_job",
    selection=AssetSelection.groups("backup"),
    description="Refresh the model store's sha256 manifest (incremental), snapshot it to the backup volume with rsync, "
    "verify the copy and a rotating scrub slice, prune old snapshots.",
    executor_def=in_process_executor,
    tags=HEAVY_TAG,
)


@job(
    executor_def=in_process_executor,
    tags=HEAVY_TAG,
    description="Copy a model (config path) or the whole store back from a snapshot (config snapshot; default the "
    "latest), verifying every copy against the snapshot's manifest before replacing anything.",
)
def restore_job():
    from idp_ops.backup.defs import restore_models  # the op lives with its domain

    restore_models()


thermal_ingest_job = define_asset_job(
    "thermal_ingest_job",
    selection=AssetSelection.groups("thermal"),
    description="Ingest the thermal spool (samples the sensor and the guard wrote) into DuckDB and roll it up hourly.",
    executor_def=in_process_executor,
)


reports_job = define_asset_job(
    "reports_job",
    # The inventory is a cheap header read; downloads stay in models_job (they hash what is present).
    selection=AssetSelection.groups("physics", "reports") | AssetSelection.assets("model_files"),
    description="Re-read the model inventory, measure memory bandwidth, recompute the throughput ceilings, the "
    "performance/thermal trends and the ROI report (plots in the UI, report.html in the data dir).",
    executor_def=in_process_executor,
    tags=HEAVY_TAG,
)


models_job = define_asset_job(
    "models_job",
    selection=AssetSelection.groups("models"),
    description="Download the models declared in settings (resumable, sha256-verified) and re-read the inventory.",
    executor_def=in_process_executor,
    tags=HEAVY_TAG,
)


nightly_validation_job = define_asset_job(
    "nightly_validation_job",
    selection=AssetSelection.groups("validation"),
    description="Benchmark every endpoint (TTFT, ITL, decode tok/s, concurrency sweep) and load-test it with Locust; "
    "judge the acceptance criteria with the physics ceilings beside them. Validates whatever stack is up; "
    "it does not deploy.",
    executor_def=in_process_executor,
    tags=STACK_EXCLUSIVE_TAG,
)


jobs = [
    deploy_job,
    containment_job,
    nightly_validation_job,
    models_job,
    weekly_backup_job,
    restore_job,
    thermal_ingest_job,
    reports_job,
]
