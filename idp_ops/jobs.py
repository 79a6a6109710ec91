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


jobs = [deploy_job, containment_job]
