"""Jobs: deploy (keys -> audit -> deployment) and containment (stop the GPU services now)."""


from typing import Optional

from dagster import AssetSelection, Config, Failure, OpExecutionContext, Output, define_asset_job, in_process_executor, job, op

from idp_ops.resources import StackResource

# Runs that change the stack queue behind each other (see dagster.yaml); containment
# carries no such tag so it never waits behind a deploy.
STACK_EXCLUSIVE_TAG = {"idp_ops/stack": "exclusive"}

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


@op(description="Stop the configured GPU services, verify they stopped, latch until re-armed by a deploy.")
def stop_gpu_services(context: OpExecutionContext, config: ContainmentConfig, stack: StackResource):
    reading = {k: v for k, v in config.model_dump().items() if k != "reason" and v is not None}
    report = stack.contain(config.reason, reading, log=context.log.warning)
    metadata = {
        "reason": report.reason,
        "reading": report.reading,
        "stopped": report.stopped,
        "still_running": report.still_running,
        "stop_seconds": report.stop_seconds,
        "contained_at": report.contained_at,
    }
    if not report.ok:
        raise Failure(description=f"GPU services still running after stop: {report.still_running}", metadata=metadata)
    context.log.warning(f"contained: {report.stopped} stopped in {report.stop_seconds:.2f} s; deploy again to re-arm")
    yield Output(report.as_dict(), metadata=metadata)


@job(executor_def=in_process_executor, description="Stop the GPU service(s) before the card overheats.")
def containment_job():
    stop_gpu_services()


weekly_backup_job = define_asset_job(
    "weekly_backup_job",
    selection=AssetSelection.groups("backup"),
    description="Refresh the model store's sha256 manifest (incremental), snapshot it to the backup volume with rsync, "
    "verify the copy and a rotating scrub slice, prune old snapshots.",
    executor_def=in_process_executor,
)


@job(
    executor_def=in_process_executor,
    description="Copy a model (config path) or the whole store back from a snapshot (config snapshot; default the "
    "latest), verifying every copy against the snapshot's manifest before replacing anything.",
)
def restore_job():
    from idp_ops.assets.backup import restore_models  # the op lives with its domain

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
)


models_job = define_asset_job(
    "models_job",
    selection=AssetSelection.groups("models"),
    description="Download the models declared in settings (resumable, sha256-verified) and re-read the inventory.",
    executor_def=in_process_executor,
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
