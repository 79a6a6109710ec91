"""Deploy assets: keys, the compose audit (a blocking gate) and the proven deployment."""

from typing import Optional

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSelection,
    Config,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    Output,
    asset,
    define_asset_job,
    in_process_executor,
    job,
    load_asset_checks_from_current_module,
    load_assets_from_current_module,
    op,
)

from idp_ops.resources import SettingsResource, StackResource
from idp_ops.runs import CONTAINMENT_TAGS, STACK_EXCLUSIVE_TAG
from idp_ops.stack.audit import BENCHMARK, AuditGateError, ComposeFileError, audit_gate_result
from idp_ops.stack.compose import ComposeError
from idp_ops.stack.deploy import ContainmentError, DeployError
from idp_ops.stack.probe import ProbeError
from idp_ops.stack.secrets import ensure_keys
from idp_ops.tables import markdown_table

GROUP = "stack"


class ApiKeysConfig(Config):
    rotate: bool = False


@asset(group_name=GROUP, description="One 256-bit API key per service, as 0600 files in a 0700 secrets dir.")
def api_keys(context: AssetExecutionContext, config: ApiKeysConfig, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    report = ensure_keys(
        cfg.secrets_dir, cfg.key_names, rotate=config.rotate, owner_uid=cfg.service_uid, owner_gid=cfg.service_gid
    )
    context.log.info(
        f"keys created: {report.created or 'none'}, rotated: {report.rotated or 'none'}, "
        f"unchanged: {report.unchanged or 'none'}"
    )
    if report.services_to_restart:
        context.log.warning(f"rotated keys: restart {report.services_to_restart} (deploy again) to apply them")
    # Names, paths and fingerprints only: a key value never enters metadata or logs.
    return MaterializeResult(
        metadata={
            "secrets_dir": MetadataValue.path(str(cfg.secrets_dir)),
            "keys": MetadataValue.json({name: {"services": s} for name, s in cfg.key_names.items()}),
            "created": report.created,
            "rotated": report.rotated,
            "unchanged": report.unchanged,
            "services_to_restart": report.services_to_restart,
            "fingerprints": MetadataValue.json(report.fingerprints),
        }
    )


@asset(
    group_name=GROUP,
    description=f"{BENCHMARK} (section 5) audit of the compose file the stack is deployed from, "
    "judged with the values the deploy interpolates.",
    check_specs=[
        AssetCheckSpec(
            "no_high_findings",
            asset="compose_audit",
            blocking=True,
            description="A high-severity finding stops the deploy before anything starts.",
        )
    ],
)
def compose_audit(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    # The same gate `idp-ops deploy` runs; here a refusal is recorded as a failed blocking check.
    try:
        audited = audit_gate_result(cfg)
        findings, accepted = audited.findings, audited.accepted
    except AuditGateError as refused:
        findings, accepted = refused.findings, refused.accepted
    except ComposeFileError as exc:
        raise Failure(description=f"cannot audit {cfg.compose_file}: {exc}") from None
    counts = {level: sum(1 for f in findings if f.severity == level) for level in ("high", "medium", "low")}
    context.log.info(f"audit of {cfg.compose_file.name} against {BENCHMARK}: {counts}")
    high = [f for f in findings if f.severity == "high"]
    return MaterializeResult(
        metadata={
            "compose_file": MetadataValue.path(str(cfg.compose_file)),
            "benchmark": BENCHMARK,
            "findings": MetadataValue.md(
                markdown_table([f.to_dict() for f in findings], ["severity", "service", "rule", "message"])
                if findings
                else "No findings."
            ),
            "high": counts["high"],
            "medium": counts["medium"],
            "low": counts["low"],
            # Accepted by the service's own x-idp-audit-accept: not blocking, still on record with the reason.
            "accepted": MetadataValue.md(
                markdown_table([a.to_dict() for a in accepted], ["severity", "service", "rule", "message", "reason"])
                if accepted
                else "None."
            ),
            "accepted_count": len(accepted),
        },
        check_results=[
            AssetCheckResult(
                check_name="no_high_findings",
                passed=not high,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "high_findings": MetadataValue.json([f.to_dict() for f in high]),
                },
                description=(
                    "no high-severity findings"
                    if not high
                    else "; ".join(f"{f.service}: {f.rule} {f.message}" for f in high)
                ),
            )
        ],
    )


@asset(
    group_name=GROUP,
    deps=[api_keys, compose_audit],
    description="The stack up and proven: every endpoint healthy, rejecting callers without a key, answering with one.",
)
def stack_deployment(context: AssetExecutionContext, stack: StackResource) -> MaterializeResult:
    try:
        report = stack.deploy(log=context.log.info)
    except (DeployError, ComposeError, ProbeError) as exc:
        raise Failure(description=str(exc)) from None
    metadata = {
        "project": report.project,
        "compose_file": MetadataValue.path(report.compose_file),
        "containers": MetadataValue.md(
            markdown_table(report.services, ["service", "state", "health", "image", "image_id", "ports"])
        ),
        "endpoints": MetadataValue.md(
            markdown_table(
                report.endpoints,
                ["endpoint", "url", "health_status", "unauthenticated_status", "authenticated_status", "completion_ms"],
            )
        ),
        "up_seconds": report.up_seconds,
        "total_seconds": report.total_seconds,
        "containment_rearmed": report.rearmed,
        # Which box's dockerd this location drove (docker_host; no secrets).
        "docker_engine": MetadataValue.json(report.engine),
    }
    if not report.ok:
        raise Failure(description="deployment not proven:\n" + "\n".join(report.problems), metadata=metadata)
    return MaterializeResult(metadata=metadata)


# -- jobs ----------------------------------------------------------------------

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


@op(
    description="Stop the configured GPU services, verify they stopped (retrying a failed stop), then latch "
    "until re-armed by a deploy."
)
def stop_gpu_services(context: OpExecutionContext, config: ContainmentConfig, stack: StackResource):
    reading = {
        k: v for k, v in config.model_dump().items() if k not in ("reason", "settings_snapshot") and v is not None
    }
    try:
        report = stack.contain(
            config.reason,
            reading,
            log=context.log.warning,
            settings_snapshot=config.settings_snapshot,
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
        "docker_engine": MetadataValue.json(report.engine),
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


defs = Definitions(
    assets=load_assets_from_current_module(),
    asset_checks=load_asset_checks_from_current_module(),
    jobs=[deploy_job, containment_job],
)
