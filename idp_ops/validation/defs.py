"""Nightly validation assets: streaming benchmarks and a Locust load test, judged by asset checks."""

import tempfile
from collections import defaultdict
from datetime import date

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSelection,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    ScheduleEvaluationContext,
    asset,
    define_asset_job,
    in_process_executor,
    load_asset_checks_from_current_module,
    load_assets_from_current_module,
    schedule,
)

from idp_ops.history import database as history
from idp_ops.physics.bandwidth_store import latest_measured_bandwidth
from idp_ops.physics.ceilings import endpoint_ceiling
from idp_ops.resources import SettingsResource
from idp_ops.runs import SCHEDULE_TIMEZONE, STACK_EXCLUSIVE_TAG
from idp_ops.stack.probe import unauthenticated_status
from idp_ops.stack.secrets import read_key
from idp_ops.tables import markdown_table
from idp_ops.validation.bench import BenchError, run_benchmark_sync
from idp_ops.validation.criteria import CRITERIA, GpuUtilizationSampler, evaluate, record_benchmark, record_load_test
from idp_ops.validation.loadtest import LoadTestError, run_locust

GROUP = "validation"
nights = DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)

_CHECK_DESCRIPTIONS = {
    "ttft_p50": "Warm time to first token, median, below the endpoint's threshold.",
    "ttft_p95": "Warm time to first token, 95th percentile, below the endpoint's threshold.",
    "decode_throughput": "Single-stream decode tok/s at or above the threshold; beside it the physics ceiling "
    "and the efficiency. A threshold above the ceiling is unattainable, not failed.",
    "success_at_concurrency": "Share of requests that succeed at the criterion's concurrency.",
    "auth_enforced": "A request without the key is rejected (401/403).",
    "gpu_utilization": "Mean GPU utilization during the benchmark (NVML), where the endpoint has a GPU criterion.",
}


def _check(criterion: str, results) -> AssetCheckResult:
    rows = [r for r in results if r.criterion == criterion]
    statuses = {r.status for r in rows}
    failed = [r for r in rows if r.status in ("failed", "no data")]
    unattainable = [r for r in rows if r.status == "unattainable"]
    if failed:
        passed, severity = False, AssetCheckSeverity.ERROR
        description = "failed: " + "; ".join(f"{r.endpoint}: {r.message}" for r in failed)
    elif unattainable:
        passed, severity = False, AssetCheckSeverity.WARN
        description = "unattainable: " + "; ".join(f"{r.endpoint}: {r.message}" for r in unattainable)
    else:
        passed, severity = True, AssetCheckSeverity.ERROR
        judged = [r for r in rows if r.status == "passed"]
        description = "; ".join(f"{r.endpoint}: {r.message}" for r in judged) or "not judged on this box"
    metadata = {f"{r.endpoint}": MetadataValue.json(r.as_dict()) for r in rows}
    metadata["statuses"] = MetadataValue.json(sorted(statuses))
    return AssetCheckResult(
        check_name=criterion, passed=passed, severity=severity, description=description, metadata=metadata
    )


@asset(
    group_name=GROUP,
    partitions_def=nights,
    description="Streaming benchmark of every endpoint: warm TTFT, single-stream decode, a concurrency sweep; "
    "percentiles from raw samples, the physics ceiling beside each throughput, every sample kept in DuckDB.",
    check_specs=[
        AssetCheckSpec(name, asset="benchmark_results", description=_CHECK_DESCRIPTIONS[name]) for name in CRITERIA
    ],
)
def benchmark_results(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    v = cfg.validation
    night = date.fromisoformat(context.partition_key)
    measured_bandwidth = latest_measured_bandwidth(cfg.history_file)
    results, rows, problems = [], [], []
    for endpoint in cfg.endpoints or []:
        key_file = cfg.key_file(endpoint)
        key = read_key(key_file) if key_file else None
        context.log.info(f"benchmarking {endpoint.name} at {endpoint.url} ({endpoint.protocol})")
        try:
            with GpuUtilizationSampler(v.gpu_sample_interval_s) as gpu:
                report = run_benchmark_sync(
                    endpoint.url,
                    endpoint.protocol,
                    endpoint.model,
                    key,
                    warmups=v.warmups,
                    ttft_requests=v.ttft_requests,
                    ttft_max_tokens=v.ttft_max_tokens,
                    decode_tokens=v.decode_tokens,
                    decode_requests=v.decode_requests,
                    sweep=v.sweep,
                    sweep_tokens=v.sweep_tokens,
                    sweep_rounds=v.sweep_rounds,
                    poisson_rate=v.poisson_rate,
                    timeout_s=v.request_timeout_s,
                    ready_timeout_s=v.ready_timeout_s,
                    endpoint=endpoint.name,
                    progress=context.log.info,
                )
        except BenchError as exc:
            raise Failure(description=f"{endpoint.name}: {exc}") from None
        ceiling = endpoint_ceiling(
            endpoint, models_dir=cfg.models_dir, hardware=cfg.hardware, measured=measured_bandwidth
        )
        with history.connect(cfg.history_file) as con:
            record_benchmark(con, night, report, ceiling.tok_s if ceiling else None)
        results += evaluate(
            endpoint,
            report,
            ceiling=ceiling,
            unauthenticated_status=unauthenticated_status(endpoint.url, endpoint.protocol, endpoint.model),
            gpu_utilization_pct=gpu.mean,
            gpu_measured=gpu.measured,
        )
        if not report.ok:
            problems.append(report.message)
        ttft = report.warm_ttft.percentiles.get("ttft_ms", {})
        rows.append(
            {
                "endpoint": endpoint.name,
                "ttft_p50_ms": _round(ttft.get("p50")),
                "ttft_p95_ms": _round(ttft.get("p95")),
                "itl_p50_ms": _round(report.decode.percentiles.get("itl_ms", {}).get("p50")),
                "decode_tok_s": _round(report.decode_tok_s),
                "server_tok_s": _round(report.server_decode_tok_s),
                "ceiling_tok_s": _round(ceiling.tok_s) if ceiling else "unknown",
                "efficiency": f"{report.decode_tok_s / ceiling.tok_s:.0%}" if ceiling and report.decode_tok_s else "",
                "sweep": ", ".join(
                    f"{s.concurrency}: {s.success_rate:.0%} {s.aggregate_output_tok_s:.0f} tok/s" for s in report.sweep
                ),
                "errors": ", ".join(f"{k} {n}" for k, n in report.errors_by_kind.items()) or "none",
            }
        )
    for problem in problems:
        context.log.warning(problem)
    by_status = defaultdict(int)
    for r in results:
        by_status[r.status] += 1
    return MaterializeResult(
        metadata={
            "night": context.partition_key,
            "endpoints": MetadataValue.md(markdown_table(rows, list(rows[0]) if rows else [])),
            "criteria": MetadataValue.md(
                markdown_table(
                    [r.as_dict() for r in results],
                    ["endpoint", "criterion", "status", "measured", "threshold", "unit", "ceiling", "message"],
                )
            ),
            "statuses": MetadataValue.json(dict(by_status)),
            "problems": MetadataValue.json(problems),
        },
        check_results=[_check(criterion, results) for criterion in CRITERIA],
    )


def _round(value):
    return round(value, 1) if isinstance(value, float) else value


@asset(
    group_name=GROUP,
    partitions_def=nights,
    deps=[benchmark_results],
    description="Locust load test of every endpoint with the plan's weighted user mix (headless, in a subprocess). "
    "Locust times only response headers for streams: its latencies are not TTFT; it counts load and failures.",
    check_specs=[
        AssetCheckSpec(
            "no_failed_requests",
            asset="load_test_results",
            description="Zero failed requests and zero 5xx answers during the load test.",
        ),
    ],
)
def load_test_results(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    v = cfg.validation
    night = date.fromisoformat(context.partition_key)
    rows, failing = [], []
    for endpoint in cfg.endpoints or []:
        context.log.info(f"load test of {endpoint.name}: {v.load_users} users for {v.load_run_time_s:.0f} s")
        with tempfile.TemporaryDirectory(prefix="idp-locust-") as csv_dir:
            try:
                result = run_locust(
                    endpoint.url,
                    endpoint.protocol,
                    endpoint.model,
                    cfg.key_file(endpoint),
                    users=v.load_users,
                    spawn_rate=v.load_spawn_rate,
                    run_time_s=v.load_run_time_s,
                    csv_dir=csv_dir,
                    wait_scale=v.load_wait_scale,
                )
            except LoadTestError as exc:
                raise Failure(description=f"{endpoint.name}: {exc}") from None
        with history.connect(cfg.history_file) as con:
            record_load_test(con, night, endpoint.name, result)
        if result.failures or result.server_errors:
            failing.append(
                f"{endpoint.name}: {result.failures} failed of {result.requests}, "
                f"{result.server_errors} 5xx ({result.failures_by_status})"
            )
        rows.append(
            {
                "endpoint": endpoint.name,
                "requests": result.requests,
                "failures": result.failures,
                "5xx": result.server_errors,
                "rps": round(result.rps, 2),
                "p50_headers_ms": result.p50_ms,
                "p95_headers_ms": result.p95_ms,
            }
        )
    return MaterializeResult(
        metadata={
            "night": context.partition_key,
            "load": MetadataValue.md(markdown_table(rows, list(rows[0]) if rows else [])),
            "note": "latencies are time to response headers (Locust), not TTFT; see benchmark_results for TTFT",
        },
        check_results=[
            AssetCheckResult(
                check_name="no_failed_requests",
                passed=not failing,
                severity=AssetCheckSeverity.ERROR,
                description="; ".join(failing) or f"{sum(r['requests'] for r in rows)} requests, none failed",
            )
        ],
    )


# -- job and schedule ----------------------------------------------------------

nightly_validation_job = define_asset_job(
    "nightly_validation_job",
    selection=AssetSelection.groups("validation"),
    description="Benchmark every endpoint (TTFT, ITL, decode tok/s, concurrency sweep) and load-test it with Locust; "
    "judge the acceptance criteria with the physics ceilings beside them. Validates whatever stack is up; "
    "it does not deploy.",
    executor_def=in_process_executor,
    tags=STACK_EXCLUSIVE_TAG,
)


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


defs = Definitions(
    assets=load_assets_from_current_module(),
    asset_checks=load_asset_checks_from_current_module(),
    jobs=[nightly_validation_job],
    schedules=[nightly_validation_schedule],
)
