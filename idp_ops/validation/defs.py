"""Nightly validation assets: streaming benchmarks and a Locust load test, judged by asset checks."""

import tempfile
from collections import defaultdict
from datetime import UTC, date, datetime

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
from idp_ops.models.router import (
    RouterClient,
    RouterError,
    RouterLoad,
    benchmark_models,
    model_endpoint,
    plan_router,
    record_router_loads,
    time_load,
)
from idp_ops.models.switch import served_model_name
from idp_ops.physics.bandwidth_store import latest_measured_bandwidth
from idp_ops.physics.ceilings import endpoint_ceiling
from idp_ops.resources import SettingsResource
from idp_ops.runs import SCHEDULE_TIMEZONE, STACK_EXCLUSIVE_TAG
from idp_ops.stack.probe import unauthenticated_status
from idp_ops.stack.secrets import read_key
from idp_ops.tables import markdown_table
from idp_ops.validation.bench import BenchError, run_benchmark_sync
from idp_ops.validation.criteria import (
    CRITERIA,
    CriterionResult,
    GpuUtilizationSampler,
    evaluate,
    evaluate_depth,
    evaluate_prefix_cache,
    record_benchmark,
    record_load_test,
)
from idp_ops.validation.goodput import goodput_levels, record_goodput
from idp_ops.validation.loadtest import LoadTestError, run_locust
from idp_ops.validation.oom_watch import OomWatch, OomWatchResult, record_oom_watch
from idp_ops.validation.server_metrics import MetricsScraper, record_server_metrics
from idp_ops.validation.workloads import (
    DepthReport,
    PrefixCacheReport,
    depth_physics,
    prefix_caching_configured,
    record_depth,
    record_prefix_cache,
    run_depth_sync,
    run_prefix_cache_sync,
)

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
    "goodput": "At every sweep level up to the criterion's concurrency, the share of requests that met their own "
    "SLOs (TTFT <= slo_ttft_ms, the request's ITL p95 <= slo_itl_ms) is at least goodput_min. Beside it (ceiling, "
    "ms): one decode step at the physics ceiling; an SLO below it is unattainable, not failed.",
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
    goodput_rows, server_metrics = [], {}
    router_loads: list[RouterLoad] = []
    # A router endpoint is benchmarked once per served model, each just loaded (load timed apart).
    for endpoint in _bench_targets(context, cfg, night, router_loads):
        key_file = cfg.key_file(endpoint)
        key = read_key(key_file) if key_file else None
        context.log.info(f"benchmarking {endpoint.name} at {endpoint.url} ({endpoint.protocol})")
        try:
            with (
                GpuUtilizationSampler(v.gpu_sample_interval_s) as gpu,
                MetricsScraper(endpoint.name, endpoint.url, key, interval_s=v.metrics_interval_s) as scraper,
            ):
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
                    arrival=v.arrival,
                    arrival_rate=v.arrival_rate,
                    pool_threshold=v.client_pool_threshold,
                    pool_workers=v.client_pool_workers,
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
        # The figures belong to the model the server says it serves (a router serves the one asked for),
        # so a switch never merges two models into one trend series.
        served = endpoint.model if endpoint.router else served_model_name(endpoint.url, key)
        with history.connect(cfg.history_file) as con:
            record_benchmark(con, night, report, ceiling.tok_s if ceiling else None, served_model=served)
            record_goodput(con, night, report, endpoint)
            record_server_metrics(con, context.run.run_id, night, "benchmark", scraper.result)
        server_metrics[endpoint.name] = scraper.result.summary()
        crit = endpoint.acceptance
        for level in goodput_levels(report, crit.slo_ttft_ms, crit.slo_itl_ms):
            goodput_rows.append(
                {
                    "endpoint": endpoint.name,
                    "concurrency": level.concurrency,
                    "arrival": level.arrival + (f" {level.arrival_rate:g}/s" if level.arrival_rate else ""),
                    "met": f"{level.met}/{level.requests}",
                    "share": f"{level.share:.0%}" if level.share is not None else "",
                    "goodput_tok_s": _round(level.goodput_tok_s),
                    "slo": f"TTFT <= {crit.slo_ttft_ms} ms, ITL p95 <= {crit.slo_itl_ms} ms",
                }
            )
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
                "load_s": next((load.load_s for load in router_loads if load.label == endpoint.name), ""),
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
            "goodput": MetadataValue.md(markdown_table(goodput_rows, list(goodput_rows[0]) if goodput_rows else [])),
            "server_metrics": MetadataValue.json(server_metrics),
            "router_loads": MetadataValue.md(
                markdown_table(
                    [load.as_dict() for load in router_loads],
                    ["endpoint", "model", "load_s", "unload_s", "models_max", "method", "error"],
                )
                if router_loads
                else "No router endpoint."
            ),
        },
        check_results=[_check(criterion, results) for criterion in CRITERIA],
    )


def _round(value):
    return round(value, 1) if isinstance(value, float) else value


def _bench_targets(context, cfg, night, router_loads: list[RouterLoad]):
    """Every endpoint; a router endpoint as each model it benchmarks (router.benchmark_models, else all).

    Each such model is unloaded and then loaded with an explicit, timed load just before its
    benchmark, so its TTFT never includes the load (and models_max 1 cannot evict it midway).
    Load times go to DuckDB (router_loads) as they are measured; a model that does not load fails
    the asset, after its row is recorded.
    """
    for endpoint in cfg.endpoints or []:
        if endpoint.router is None:
            yield endpoint
            continue
        try:
            plan = plan_router(cfg, endpoint)
            names = benchmark_models(endpoint, plan.names)
        except RouterError as exc:
            raise Failure(description=f"{endpoint.name}: {exc}") from None
        entries = {e.name: e for e in plan.entries}
        key_file = cfg.key_file(endpoint)
        context.log.info(f"{endpoint.name}: router, benchmarking {names} ({plan.explain()})")
        with RouterClient(endpoint.url, read_key(key_file) if key_file else None) as client:
            for name in names:
                load = time_load(client, endpoint.name, name, timeout_s=max(cfg.validation.ready_timeout_s, 300.0))
                load.models_max = plan.models_max
                router_loads.append(load)
                with history.connect(cfg.history_file) as con:
                    record_router_loads(con, night, [load])
                if not load.ok:
                    raise Failure(description=f"{endpoint.name}: model {name} did not load: {load.error}")
                context.log.info(f"{endpoint.name}: {name} loaded in {load.load_s:.2f} s (unloaded first)")
                yield model_endpoint(endpoint, entries[name])


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
        AssetCheckSpec(
            "no_oom",
            asset="load_test_results",
            description="Zero OOM errors during the load test: no endpoint container OOM-killed, restarted or "
            "exited, no 'oom' event, no kernel cgroup oom_kill, no out-of-memory line in its log. "
            "Docker unreachable: not judged (not passed).",
        ),
    ],
)
def load_test_results(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    v = cfg.validation
    night = date.fromisoformat(context.partition_key)
    rows, failing = [], []
    endpoints = cfg.endpoints or []
    # One watch over every endpoint's container for the whole load test: memory is the host's,
    # so one endpoint's load can OOM another's container.
    watch = OomWatch(
        cfg.compose_project,
        [e.compose_service for e in endpoints if e.compose_service],
        interval_s=v.oom_interval_s,
        engine=cfg.docker_engine,
    )
    with watch:
        _load_every_endpoint(context, cfg, night, endpoints, rows, failing)
    oom = watch.result
    with history.connect(cfg.history_file) as con:
        for endpoint in endpoints:
            record_oom_watch(con, night, endpoint.name, endpoint.compose_service, oom)
    return MaterializeResult(
        metadata={
            "night": context.partition_key,
            "load": MetadataValue.md(markdown_table(rows, list(rows[0]) if rows else [])),
            "note": "latencies are time to response headers (Locust), not TTFT; see benchmark_results for TTFT",
            "oom_watch": MetadataValue.json(oom.to_dict()),
        },
        check_results=[
            AssetCheckResult(
                check_name="no_failed_requests",
                passed=not failing,
                severity=AssetCheckSeverity.ERROR,
                description="; ".join(failing) or f"{sum(r['requests'] for r in rows)} requests, none failed",
            ),
            _no_oom_check(endpoints, oom),
        ],
    )


def _no_oom_check(endpoints, oom: OomWatchResult) -> AssetCheckResult:
    statuses = {e.name: oom.status_for(e.compose_service) if e.compose_service else "not judged" for e in endpoints}
    messages = {
        e.name: oom.message_for(e.compose_service) if e.compose_service else "not judged: no compose service to watch"
        for e in endpoints
    }
    failed = [f"{name}: {messages[name]}" for name, status in statuses.items() if status == "failed"]
    unjudged = [f"{name}: {messages[name]}" for name, status in statuses.items() if status == "not judged"]
    if failed:
        passed, severity, description = False, AssetCheckSeverity.ERROR, "failed: " + "; ".join(failed)
    elif not oom.judged:
        passed, severity, description = False, AssetCheckSeverity.WARN, oom.message
    elif unjudged or not endpoints:
        passed, severity = False, AssetCheckSeverity.WARN
        description = "not judged: " + ("; ".join(unjudged) or "no endpoints")
    else:
        passed, severity = True, AssetCheckSeverity.ERROR
        description = "; ".join(f"{name}: {message}" for name, message in messages.items())
    metadata = {name: MetadataValue.json({"status": statuses[name], "message": messages[name]}) for name in statuses}
    metadata["findings"] = MetadataValue.json([f.__dict__ for f in oom.findings])
    metadata["containers"] = MetadataValue.json(oom.containers)
    metadata["notes"] = MetadataValue.json(oom.notes)
    return AssetCheckResult(
        check_name="no_oom", passed=passed, severity=severity, description=description, metadata=metadata
    )


def _load_every_endpoint(context, cfg, night, endpoints, rows, failing) -> None:
    v = cfg.validation
    for endpoint in endpoints:
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


# -- workloads that look like real use (workloads.py) ----------------------------


def _workload_target(cfg, endpoint, measured_bandwidth):
    key_file = cfg.key_file(endpoint)
    key = read_key(key_file) if key_file else None
    ceiling = endpoint_ceiling(endpoint, models_dir=cfg.models_dir, hardware=cfg.hardware, measured=measured_bandwidth)
    return key, ceiling


def _router_not_judged(endpoint, criterion: str) -> CriterionResult:
    # The router needs the model named on /tokenize and /props, which these workloads do not send
    # yet; its models are benchmarked one by one in benchmark_results. Said, not silently skipped.
    return CriterionResult(
        endpoint.name,
        criterion,
        "not judged",
        None,
        None,
        "",
        message="router endpoint: this workload runs on single-model endpoints only (see benchmark_results)",
    )


@asset(
    group_name=GROUP,
    partitions_def=nights,
    deps=[benchmark_results],
    description="Context depth: TTFT, prefill tok/s and decode tok/s at prompts of exactly `depths` tokens (the "
    "server's own tokenizer; capped by its context), prefix cache defeated; llama-server's own timings and the "
    "decode ceiling at each depth (weights + KV cache read) beside them.",
    check_specs=[
        AssetCheckSpec(
            "context_depth_measured",
            asset="context_depth_results",
            description="Every depth measured at its exact token count (the server's count agrees, nothing served "
            "from a cache), decode below the physics ceiling at that depth.",
        )
    ],
)
def context_depth_results(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    v = cfg.validation
    night = date.fromisoformat(context.partition_key)
    measured_bandwidth = latest_measured_bandwidth(cfg.history_file)
    results, rows, metrics = [], [], {}
    for endpoint in cfg.endpoints or []:
        if endpoint.router is not None:
            results.append(_router_not_judged(endpoint, "context_depth_measured"))
            continue
        key, ceiling = _workload_target(cfg, endpoint, measured_bandwidth)
        physics = depth_physics(endpoint, cfg.models_dir, ceiling)
        context.log.info(f"context depth on {endpoint.name}: depths {v.depths}")
        try:
            with MetricsScraper(endpoint.name, endpoint.url, key, interval_s=v.metrics_interval_s) as scraper:
                report = run_depth_sync(
                    endpoint.url,
                    endpoint.protocol,
                    endpoint.model,
                    key,
                    depths=v.depths,
                    requests=v.depth_requests,
                    max_tokens=v.depth_max_tokens,
                    physics=physics,
                    timeout_s=max(v.request_timeout_s, 300.0),
                    ready_timeout_s=v.ready_timeout_s,
                    endpoint=endpoint.name,
                    progress=context.log.info,
                )
        except BenchError as exc:
            # One endpoint that cannot run the workload does not hide the others: its check says why.
            report = DepthReport(
                endpoint.name, endpoint.url, datetime.now(UTC), None, "unknown", [], problems=[str(exc)]
            )
        with history.connect(cfg.history_file) as con:
            record_depth(con, night, report)
            record_server_metrics(con, context.run.run_id, night, "context_depth", scraper.result)
        metrics[endpoint.name] = scraper.result.summary()
        results.append(evaluate_depth(endpoint, report))
        for p in report.points:
            rows.append(
                {
                    "endpoint": endpoint.name,
                    "depth": p.depth if p.depth == p.requested_depth else f"{p.depth} (of {p.requested_depth})",
                    "ttft_ms": _round(p.ttft_ms),
                    "prefill_tok_s": _round(p.prefill_tok_s),
                    "server_prefill_tok_s": _round(p.server_prefill_tok_s),
                    "server_prompt_ms": _round(p.server_prompt_ms),
                    "decode_tok_s": _round(p.decode_tok_s),
                    "server_decode_tok_s": _round(p.server_decode_tok_s),
                    "ceiling_tok_s": _round(p.ceiling_tok_s) if p.ceiling_tok_s else "unknown",
                    "efficiency": f"{p.decode_tok_s / p.ceiling_tok_s:.0%}"
                    if p.ceiling_tok_s and p.decode_tok_s
                    else "",
                }
            )
    return MaterializeResult(
        metadata={
            "night": context.partition_key,
            "depths": MetadataValue.md(markdown_table(rows, list(rows[0]) if rows else [])),
            "server_metrics": MetadataValue.json(metrics),
        },
        check_results=[_check("context_depth_measured", results)],
    )


@asset(
    group_name=GROUP,
    partitions_def=nights,
    deps=[context_depth_results],
    description="Prefix cache: rounds of one long shared system prompt (cold: a new prefix) followed by distinct "
    "questions (warm, cache_prompt on). TTFT cold against warm and the server's cache hit figure.",
    check_specs=[
        AssetCheckSpec(
            "prefix_cache_works",
            asset="prefix_cache_results",
            description="Where the compose file turns prefix caching on, warm TTFT p50 <= "
            "prefix_cache_ttft_ratio_max x cold p50 and the server reports cached tokens. Off by configuration: "
            "not judged. A ratio that would need a TTFT below one decode step is unattainable.",
        )
    ],
)
def prefix_cache_results(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    v = cfg.validation
    night = date.fromisoformat(context.partition_key)
    measured_bandwidth = latest_measured_bandwidth(cfg.history_file)
    results, rows, metrics = [], [], {}
    for endpoint in cfg.endpoints or []:
        if endpoint.router is not None:
            results.append(_router_not_judged(endpoint, "prefix_cache_works"))
            continue
        key, ceiling = _workload_target(cfg, endpoint, measured_bandwidth)
        configured, why = prefix_caching_configured(cfg, endpoint)
        context.log.info(f"prefix cache on {endpoint.name}: {why}")
        try:
            with MetricsScraper(endpoint.name, endpoint.url, key, interval_s=v.metrics_interval_s) as scraper:
                report = run_prefix_cache_sync(
                    endpoint.url,
                    endpoint.protocol,
                    endpoint.model,
                    key,
                    prefix_tokens=v.prefix_tokens,
                    rounds=v.prefix_rounds,
                    warm_requests=v.prefix_warm_requests,
                    max_tokens=v.prefix_max_tokens,
                    timeout_s=max(v.request_timeout_s, 300.0),
                    ready_timeout_s=v.ready_timeout_s,
                    endpoint=endpoint.name,
                    progress=context.log.info,
                )
        except BenchError as exc:
            report = PrefixCacheReport(
                endpoint.name, endpoint.url, datetime.now(UTC), 0, v.prefix_tokens, None, [], problems=[str(exc)]
            )
        summary = scraper.result.summary()
        if report.warm_hit_rate is None:
            # No cached-token count on the answers (vLLM without prompt-token details): its /metrics counters.
            hits, queries = summary.get("prefix_cache_hits"), summary.get("prefix_cache_queries")
            if hits and queries and queries["increase"] > 0:
                report.warm_hit_rate = round(hits["increase"] / queries["increase"], 4)
        with history.connect(cfg.history_file) as con:
            record_prefix_cache(con, night, report)
            record_server_metrics(con, context.run.run_id, night, "prefix_cache", scraper.result)
        metrics[endpoint.name] = summary
        results.append(evaluate_prefix_cache(endpoint, report, configured=configured, why=why, ceiling=ceiling))
        rows.append(
            {
                "endpoint": endpoint.name,
                "prefix_tokens": report.prefix_tokens,
                "cold_ttft_p50_ms": _round(report.cold_ttft.get("p50")),
                "warm_ttft_p50_ms": _round(report.warm_ttft.get("p50")),
                "warm/cold": report.ttft_ratio,
                "max_ratio": endpoint.acceptance.prefix_cache_ttft_ratio_max,
                "warm_hit_rate": f"{report.warm_hit_rate:.0%}" if report.warm_hit_rate is not None else "unknown",
                "cold_hit_rate": f"{report.cold_hit_rate:.0%}" if report.cold_hit_rate is not None else "unknown",
                "configured": why,
            }
        )
    return MaterializeResult(
        metadata={
            "night": context.partition_key,
            "prefix_cache": MetadataValue.md(markdown_table(rows, list(rows[0]) if rows else [])),
            "server_metrics": MetadataValue.json(metrics),
        },
        check_results=[_check("prefix_cache_works", results)],
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
