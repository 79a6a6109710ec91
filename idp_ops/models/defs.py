"""Model assets: the declared downloads (verified by sha256) and the inventory of model files."""

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
from pydantic import Field

from idp_ops.history.database import HistoryError
from idp_ops.models.downloads import DownloadProgress, download_models, record_downloads
from idp_ops.models.gguf_meta import ModelFile, ModelScanError, record_scan, scan_models
from idp_ops.resources import SettingsResource
from idp_ops.runs import HEAVY_TAG, STACK_EXCLUSIVE_TAG
from idp_ops.stack.secrets import HF_TOKEN_FILE_NAME

GROUP = "models"


@asset(
    group_name=GROUP,
    description="The models declared in settings (model_downloads), present and sha256-verified: "
    "resumable downloads, renamed into place only on a hash match.",
)
def model_downloads(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    if not cfg.model_downloads:
        context.log.info("no model downloads declared (settings: model_downloads)")
        return MaterializeResult(metadata={"declared": 0, "models": MetadataValue.md("No model downloads declared.")})

    def progress(p: DownloadProgress) -> None:
        context.log.info(p.describe())

    # Hub repos: the token file is read inside, passed only as a header; it never reaches the log or metadata.
    results = download_models(
        cfg.model_downloads,
        cfg.models_dir,
        hf_token_file=cfg.secrets_dir / HF_TOKEN_FILE_NAME,
        log=context.log.info,
        progress=progress,
    )
    try:
        recorded = record_downloads(cfg.history_file, results)
    except HistoryError as exc:  # the files are placed and verified either way; say the record is missing
        context.log.warning(f"downloads not recorded in history: {exc}")
        recorded = 0
    rows = [
        {
            "name": r.name,
            "status": r.status,
            "target": r.target,
            "bytes": f"{r.bytes_downloaded:,}",
            "size": f"{r.size:,}" if r.size is not None else "",
            "seconds": r.seconds,
            "attempts": r.attempts,
            "commit": r.commit or "",
            "message": r.message,
        }
        for r in results
    ]
    counts = {status: sum(1 for r in results if r.status == status) for status in ("downloaded", "skipped", "failed")}
    metadata = {
        "models_dir": MetadataValue.path(str(cfg.models_dir)),
        "models": MetadataValue.md(
            _md_table(rows, ["name", "status", "bytes", "size", "seconds", "attempts", "commit", "message"])
        ),
        "per_model": MetadataValue.json({r.name: r.as_dict() for r in results}),
        "declared": len(results),
        **counts,
        "bytes_downloaded": sum(r.bytes_downloaded for r in results),
        "recorded_in_history": recorded,
    }
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise Failure(
            description=f"{len(failed)} of {len(results)} model downloads failed:\n"
            + "\n".join(f"{r.name}: {r.message}" for r in failed),
            metadata=metadata,
        )
    return MaterializeResult(metadata=metadata)


@asset(
    group_name=GROUP,
    deps=[model_downloads],
    description="Every model file in the models dir (GGUF and safetensors headers, config.json, tokenizer files) "
    "with the facts physics needs, recorded in DuckDB table model_files. Corrupt or truncated files are findings.",
    check_specs=[
        AssetCheckSpec(
            "no_findings",
            asset="model_files",
            description="Warns on any truncated, corrupt or unreadable model file, naming each.",
        )
    ],
)
def model_files(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    try:
        files = scan_models(cfg.models_dir)
    except ModelScanError as exc:
        raise Failure(description=str(exc)) from None
    recorded = record_scan(cfg.history_file, cfg.models_dir, files)
    findings = [f for f in files if f.finding]
    for f in findings:
        context.log.warning(f"{f.relpath}: {f.finding}")
    by_kind: dict[str, int] = {}
    for f in files:
        by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
    context.log.info(f"{len(files)} model files in {cfg.models_dir} ({by_kind}), {len(findings)} findings")
    return MaterializeResult(
        metadata={
            "models_dir": MetadataValue.path(str(cfg.models_dir)),
            "files": MetadataValue.md(
                _md_table(
                    [_display(f) for f in files],
                    ["path", "kind", "architecture", "params", "quant", "layers", "context", "size", "finding"],
                )
                if files
                else "No model files found."
            ),
            "file_count": len(files),
            "by_kind": MetadataValue.json(by_kind),
            "total_bytes": sum(f.size for f in files),
            "findings": len(findings),
            "rows_recorded": recorded,
            "history_file": MetadataValue.path(str(cfg.history_file)),
        },
        check_results=[
            AssetCheckResult(
                check_name="no_findings",
                passed=not findings,
                severity=AssetCheckSeverity.WARN,
                metadata={"findings": MetadataValue.json({f.relpath: f.finding for f in findings})},
                description="no findings" if not findings else "; ".join(f"{f.relpath}: {f.finding}" for f in findings),
            )
        ],
    )


def _display(f: ModelFile) -> dict:
    return {
        "path": f.relpath,
        "kind": f.kind,
        "architecture": f.architecture or "",
        "params": _human(f.parameters, "") if f.parameters else "",
        "quant": f.file_type or "",
        "layers": f.block_count or "",
        "context": f.context_length or "",
        "size": _human(f.size, "B"),
        "finding": f.finding or "",
    }


def _human(n: float, unit: str) -> str:
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.0f} {unit}".strip() if prefix == "" else f"{n:.1f} {prefix}{unit}"
        n /= 1000
    return str(n)


def _md_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = (str(row.get(c, "")).replace("|", "/").replace("\n", " ") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- job ----------------------------------------------------------------------

models_job = define_asset_job(
    "models_job",
    selection=AssetSelection.groups("models"),
    description="Download the models declared in settings (resumable, sha256-verified) and re-read the inventory.",
    executor_def=in_process_executor,
    tags=HEAVY_TAG,
)


# -- switch_model_job (models/switch.py) ------------------------------------------------


class SwitchModelConfig(Config):
    """Which endpoint serves which GGUF next; an unknown name fails the run with the choices listed."""

    endpoint: str = Field(description="endpoint name (settings: endpoints), e.g. llamacpp-cpu")
    model: str = Field(description="GGUF in the models dir: relative path, file name, or name without .gguf")


@op(
    description="Preflight (inventory, manifest, memory fit, physics ceiling vs criteria), recreate only the "
    "endpoint's service with the model, prove it; on any failure roll back and prove the previous model."
)
def switch_model(context: OpExecutionContext, config: SwitchModelConfig, settings: SettingsResource):
    from idp_ops.models.switch import SwitchInputError
    from idp_ops.models.switch import switch_model as run_switch
    from idp_ops.tables import markdown_table

    try:
        result = run_switch(settings.load(), config.endpoint, config.model, progress=context.log.info)
    except SwitchInputError as exc:
        raise Failure(description=f"bad run config: {exc}") from None
    data = result.as_dict()
    metadata = {
        "outcome": result.outcome,
        "endpoint": result.endpoint,
        "from": f"{result.from_model} ({result.from_file})",
        "to": f"{result.to_model} ({result.to_file})",
        "message": result.message,
        **{
            f"{phase}_s": data[f"{phase}_s"]
            for phase in ("preflight", "recreate", "prove", "rollback")
            if data[f"{phase}_s"] is not None
        },  # fmt: skip
        "preflight": MetadataValue.md(markdown_table(result.preflight, ["check", "status", "detail"])),
        "served": MetadataValue.json(result.served or {}),
        "switch_id": result.id,
    }
    if not result.ok:
        (context.log.error if result.outcome == "rollback_failed" else context.log.warning)(result.message)
        raise Failure(description=f"{result.outcome}: {result.message}", metadata=metadata)
    yield Output(data, metadata=metadata)


@job(
    executor_def=in_process_executor,
    description="Switch the model a llama.cpp endpoint serves (run config: endpoint, model); proven or rolled back.",
    tags={**STACK_EXCLUSIVE_TAG, **HEAVY_TAG},
)
def switch_model_job():
    switch_model()


defs = Definitions(
    assets=load_assets_from_current_module(),
    asset_checks=load_asset_checks_from_current_module(),
    jobs=[models_job, switch_model_job],
)
