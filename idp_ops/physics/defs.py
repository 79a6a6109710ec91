"""Physics assets: this host's memory bandwidth, and the decode ceilings it allows.

Every measured figure elsewhere (validation, trends) is read against these
ceilings; a criterion above its ceiling is flagged unattainable instead of
failing every night forever.
"""

import os
import socket

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
    load_asset_checks_from_current_module,
    load_assets_from_current_module,
)

from idp_ops.models.gguf_meta import load_inventory
from idp_ops.physics.bandwidth import measure_cpu_bandwidth
from idp_ops.physics.bandwidth_store import (
    DEVICE_CPU,
    DEVICE_GPU,
    SOURCE_DATASHEET,
    SOURCE_MEASURED,
    BandwidthRow,
    latest_measured_bandwidth,
    measure_gpu_bandwidth,
    record_bandwidth,
)
from idp_ops.physics.report import ceiling_for, criteria_rows, model_facts, plan_claims
from idp_ops.reports.html import html_paragraphs, html_table, write_section
from idp_ops.reports.trends import latest_per_endpoint, load_bench_runs
from idp_ops.resources import SettingsResource
from idp_ops.tables import markdown_table

GROUP = "physics"


class MemoryBandwidthConfig(Config):
    # Far larger than any CPU's last-level cache, so the probe reads DRAM, not cache.
    buffer_mb: int = 512
    repeats: int = 10
    gpu_buffer_mb: int = 1024


@asset(
    group_name=GROUP,
    description="This host's memory bandwidth: a streaming read (and copy) with 1 thread and with all threads, "
    "and the GPU's where a CUDA array library (CuPy, PyTorch) is importable, else the datasheet figure, labelled. "
    "Rows go to bandwidth_measurements; the ceilings use the newest measured figures.",
)
def memory_bandwidth(
    context: AssetExecutionContext, config: MemoryBandwidthConfig, settings: SettingsResource
) -> MaterializeResult:
    cfg = settings.load()
    hardware = cfg.hardware
    cores = os.cpu_count() or 1
    one = measure_cpu_bandwidth(config.buffer_mb, threads=1, repeats=config.repeats)
    many = measure_cpu_bandwidth(config.buffer_mb, threads=cores, repeats=config.repeats) if cores > 1 else one
    rows = [BandwidthRow(DEVICE_CPU, 1, one.read_gbs, one.copy_gbs, SOURCE_MEASURED)]
    if cores > 1:
        rows.append(BandwidthRow(DEVICE_CPU, cores, many.read_gbs, many.copy_gbs, SOURCE_MEASURED))
    context.log.info(f"CPU read {one.read_gbs} GB/s (1 thread), {many.read_gbs} GB/s ({cores} threads)")

    gpu = measure_gpu_bandwidth(config.gpu_buffer_mb)
    if gpu is not None:
        rows.append(BandwidthRow(DEVICE_GPU, 0, gpu.read_gbs, gpu.copy_gbs, SOURCE_MEASURED))
        gpu_text = (
            f"{gpu.read_gbs} GB/s read, {gpu.copy_gbs} GB/s copy (measured with {gpu.library} on {gpu.device_name})"
        )
    elif hardware.gpu_bandwidth_gbs:
        rows.append(BandwidthRow(DEVICE_GPU, 0, hardware.gpu_bandwidth_gbs, None, SOURCE_DATASHEET))
        gpu_text = (
            f"{hardware.gpu_bandwidth_gbs:g} GB/s: datasheet of {hardware.gpu_name or 'the GPU'} (not measured: no CUDA "
            "array library importable; install cupy or torch with CUDA to measure)"
        )
    else:
        gpu_text = "none: no GPU measured and the hardware profile names no GPU bandwidth"
    measured_at = record_bandwidth(cfg.history_file, rows, host=socket.gethostname())

    table = [
        {
            "device": r.device,
            "threads": r.threads or "",
            "read_gbs": r.read_gbs,
            "copy_gbs": r.copy_gbs or "",
            "source": r.source,
        }  # fmt: skip
        for r in rows
    ]
    metadata = {
        "measured_at": measured_at.isoformat(),
        "host": socket.gethostname(),
        "cpu_read_gbs_1_thread": one.read_gbs,
        "cpu_read_gbs_all_threads": many.read_gbs,
        "cpu_copy_gbs_all_threads": many.copy_gbs,
        "cpu_threads": cores,
        "cpu_runs_read_gbs": MetadataValue.json({"1": one.runs_read_gbs, str(cores): many.runs_read_gbs}),
        "buffer_mb": config.buffer_mb,
        "gpu_gbs": gpu.read_gbs if gpu else (hardware.gpu_bandwidth_gbs or None),
        "gpu_source": SOURCE_MEASURED if gpu else (SOURCE_DATASHEET if hardware.gpu_bandwidth_gbs else "none"),
        "gpu": gpu_text,
        "hardware_profile": hardware.name,
        "measurements": MetadataValue.md(
            markdown_table(table, ["device", "threads", "read_gbs", "copy_gbs", "source"])
        ),
    }
    if hardware.cpu_bandwidth_gbs:
        # How much of the datasheet the probe reaches: what the profile's efficiency factor stands for.
        metadata["cpu_datasheet_gbs"] = hardware.cpu_bandwidth_gbs
        metadata["cpu_fraction_of_datasheet"] = round(many.read_gbs / hardware.cpu_bandwidth_gbs, 3)
    return MaterializeResult(metadata=metadata)


def _pct(fraction: float | None) -> str:
    if fraction is None:
        return ""
    # A tiny model on a fast bus sits at a fraction of a percent: keep two figures, not "0%".
    return f"{fraction:.0%}" if fraction >= 0.01 else f"{fraction * 100:.2g}%"


def _fmt(value, digits: int = 3):
    if value is None:
        return ""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    return value


@asset(
    group_name=GROUP,
    deps=[memory_bandwidth],
    description="Single-stream (and, where a GPU FLOP figure is known, batched 1/8/32) decode ceilings of every "
    "configured endpoint and of every inventoried model on each endpoint's device, from the measured bandwidth "
    "(else the datasheet x efficiency); the endpoints' acceptance criteria and the plan's throughput claims "
    "checked against them.",
    check_specs=[
        AssetCheckSpec(
            "criteria_attainable",
            asset="throughput_ceilings",
            description="No acceptance criterion asks for more than physics allows (such a criterion would fail "
            "every night whatever the server does).",
        )
    ],
)
def throughput_ceilings(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    measured = latest_measured_bandwidth(cfg.history_file)
    models = model_facts(load_inventory(cfg.history_file))
    by_name = {m.name: m for m in models}
    latest = latest_per_endpoint(load_bench_runs(cfg.history_file))
    # Not a Settings field yet: batched ceilings appear once the hardware profile carries one.
    gpu_tflops = getattr(cfg.hardware, "gpu_tflops", None)
    common = dict(models_dir=cfg.models_dir, hardware=cfg.hardware, measured=measured, gpu_tflops=gpu_tflops)

    endpoint_rows, model_rows, criteria = [], [], []
    for endpoint in cfg.endpoints or []:
        own = by_name.get(endpoint.model_file) if endpoint.model_file else None
        ceiling = ceiling_for(endpoint, model=own, **common)
        measured_tok_s = (latest.get(endpoint.name) or {}).get("decode_tok_s")
        efficiency = measured_tok_s / ceiling.tok_s if measured_tok_s and ceiling.tok_s else None
        endpoint_rows.append((endpoint, ceiling, measured_tok_s, efficiency))
        criteria.extend(criteria_rows(endpoint, ceiling, latest.get(endpoint.name)))
        for model in models:
            model_rows.append(ceiling_for(endpoint, model=model, **common))
    claims = plan_claims(models)

    endpoint_table = [
        {
            "endpoint": e.name,
            "model": c.model,
            "device": c.device,
            "ceiling_tok_s": _fmt(c.tok_s),
            "measured_tok_s": _fmt(m),
            "efficiency": _pct(eff) + (" (beats the ceiling: check the inputs)" if eff > 1 else "") if eff else "",
            "weight_gb": _fmt(c.weight_gb),
            "bandwidth_gbs": _fmt(c.bandwidth_gbs),
            "source": c.bandwidth_source or "",
            "efficiency_factor": c.efficiency if c.efficiency is not None else "",
            **{f"batch_{b}_tok_s": _fmt(c.batched_tok_s.get(b)) for b in (1, 8, 32) if c.batched_tok_s},
            "note": c.note,
        }
        for e, c, m, eff in endpoint_rows
    ]
    endpoint_columns = [
        "endpoint",
        "model",
        "device",
        "ceiling_tok_s",
        "measured_tok_s",
        "efficiency",
        "weight_gb",
        "bandwidth_gbs",
        "source",
        "efficiency_factor",
    ]
    if any(c.batched_tok_s for _, c, _, _ in endpoint_rows):
        endpoint_columns += ["batch_1_tok_s", "batch_8_tok_s", "batch_32_tok_s"]
    endpoint_columns.append("note")
    model_table = [
        {
            "model": r.model,
            "endpoint": r.endpoint,
            "device": r.device,
            "ceiling_tok_s": _fmt(r.tok_s),
            "weight_gb": _fmt(r.weight_gb),
            "bandwidth_gbs": _fmt(r.bandwidth_gbs),
            "source": r.bandwidth_source or "",
            "note": r.note,
        }  # fmt: skip
        for r in model_rows
    ]
    model_columns = ["model", "endpoint", "device", "ceiling_tok_s", "weight_gb", "bandwidth_gbs", "source", "note"]
    criteria_table = [
        {
            **c.as_dict(),
            "ceiling": _fmt(c.ceiling),
            "measured": _fmt(c.measured),
            "efficiency": _pct(c.efficiency),
        }  # fmt: skip
        for c in criteria
    ]
    criteria_columns = ["endpoint", "criterion", "threshold", "ceiling", "measured", "efficiency", "status", "note"]
    claims_table = [{**c.as_dict(), "ceiling": _fmt(c.ceiling), "ratio": f"{c.ratio:.2f}"} for c in claims]
    claims_columns = ["claim", "claimed", "unit", "ceiling", "ratio", "status", "verdict", "basis"]
    unattainable = [c for c in criteria if c.status == "unattainable"]

    bandwidth_line = (
        f"bandwidth used: CPU {measured.cpu_read_gbs_one_thread or '-'} GB/s (1 thread) / "
        f"{measured.cpu_read_gbs_all_threads or '-'} GB/s (all threads), GPU {measured.gpu_gbs or '-'} GB/s measured; "
        f"where a figure is missing the {cfg.hardware.name} datasheet x {cfg.hardware.efficiency:g} is used"
    )
    body = (
        html_paragraphs([bandwidth_line])
        + "<h3>Endpoints</h3>" + html_table(endpoint_table, endpoint_columns)
        + "<h3>Acceptance criteria</h3>" + (html_table(criteria_table, criteria_columns) if criteria else "<p>none configured</p>")
        + "<h3>Inventoried models on each endpoint's device</h3>"
        + (html_table(model_table, model_columns) if model_rows else "<p>no models in model_files yet</p>")
        + "<h3>The plan's claims (on the plan's hardware, datasheet)</h3>" + html_table(claims_table, claims_columns)
    )  # fmt: skip
    report = write_section(cfg.data_dir / "reports", "physics", "Throughput ceilings", body)
    context.log.info(f"{len(endpoint_rows)} endpoint ceilings, {len(model_rows)} model rows; report {report}")

    return MaterializeResult(
        metadata={
            "bandwidth": bandwidth_line,
            "endpoints": MetadataValue.md(markdown_table(endpoint_table, endpoint_columns)),
            "acceptance_criteria": MetadataValue.md(
                markdown_table(criteria_table, criteria_columns) if criteria else "No acceptance criteria configured."
            ),
            "models": MetadataValue.md(
                markdown_table(model_table, model_columns)
                if model_rows
                else "No models in model_files yet: materialize model_files (models group)."
            ),
            "plan_claims": MetadataValue.md(markdown_table(claims_table, claims_columns)),
            "unattainable_criteria": len(unattainable),
            "batched": "computed" if gpu_tflops else "skipped: no GPU FLOP figure in the hardware profile",
            "report": MetadataValue.path(str(report)),
        },
        check_results=[
            AssetCheckResult(
                check_name="criteria_attainable",
                passed=not unattainable,
                severity=AssetCheckSeverity.WARN,
                description=(
                    "; ".join(
                        f"{c.endpoint} {c.criterion} {c.threshold:g} is unattainable: {c.note}" for c in unattainable
                    )
                    if unattainable
                    else f"all {len(criteria)} criteria are within their ceilings"
                ),
                metadata={"unattainable": [f"{c.endpoint}.{c.criterion}" for c in unattainable]},
            )
        ],
    )


defs = Definitions(
    assets=load_assets_from_current_module(),
    asset_checks=load_asset_checks_from_current_module(),
)
