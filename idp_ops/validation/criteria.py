"""Nightly validation: judge benchmark figures against acceptance criteria, with physics beside them.

A criterion that asks for more than the hardware can physically deliver is
*unattainable*, reported apart from *failed*, so a night is not red forever
because of a wrong number in a plan. A measurement above its ceiling is a bug
in the ceiling's inputs and is reported as such.
"""

from __future__ import annotations

import json
import statistics
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime

import duckdb

from idp_ops.history import database as history
from idp_ops.physics.ceilings import EndpointCeiling
from idp_ops.physics.formulas import criterion_status
from idp_ops.settings import Endpoint

CRITERIA = (
    "ttft_p50",
    "ttft_p95",
    "decode_throughput",
    "success_at_concurrency",
    "auth_enforced",
    "gpu_utilization",
    "goodput",
)


@dataclass
class CriterionResult:
    endpoint: str
    criterion: str
    status: str  # passed | failed | unattainable | not judged | no data
    measured: float | None
    threshold: float | None
    unit: str
    ceiling: float | None = None
    efficiency: float | None = None
    message: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _p(report, scenario: str, metric: str, key: str) -> float | None:
    values = getattr(report, scenario).percentiles.get(metric) or {}
    return values.get(key) if values.get("n") else None


def _at_concurrency(report, concurrency: int):
    candidates = [s for s in report.sweep if s.concurrency <= concurrency]
    return max(candidates, key=lambda s: s.concurrency) if candidates else None


def evaluate(
    endpoint: Endpoint,
    report,
    *,
    ceiling: EndpointCeiling | None,
    unauthenticated_status: int | None,
    gpu_utilization_pct: float | None,
    gpu_measured: bool,
) -> list[CriterionResult]:
    """Every criterion for one endpoint, from one BenchReport (core/bench.py)."""
    criteria = endpoint.acceptance
    results: list[CriterionResult] = []

    def latency(name: str, measured: float | None, threshold: float | None) -> None:
        if threshold is None:
            results.append(
                CriterionResult(endpoint.name, name, "not judged", measured, None, "ms", message="no threshold set")
            )
            return
        status = criterion_status(measured, threshold, None, higher_is_better=False)
        message = "no successful request" if measured is None else f"{measured:.1f} ms vs < {threshold:g} ms"
        results.append(CriterionResult(endpoint.name, name, status, measured, threshold, "ms", message=message))

    latency("ttft_p50", _p(report, "warm_ttft", "ttft_ms", "p50"), criteria.ttft_p50_ms)
    latency("ttft_p95", _p(report, "warm_ttft", "ttft_ms", "p95"), criteria.ttft_p95_ms)

    measured = report.decode_tok_s
    top = ceiling.tok_s if ceiling else None
    efficiency = measured / top if measured is not None and top else None
    if criteria.decode_tok_s_min is None:
        status, message = "not judged", "no threshold set"
    else:
        status = criterion_status(measured, criteria.decode_tok_s_min, top, higher_is_better=True)
        message = (
            f"threshold {criteria.decode_tok_s_min:g} tok/s is above the physics ceiling {top:.1f} tok/s"
            if status == "unattainable"
            else (
                "no successful decode"
                if measured is None
                else f"{measured:.1f} tok/s vs >= {criteria.decode_tok_s_min:g}"
            )
        )
    if measured is not None and top is not None and measured > top * 1.02:
        # Physics cannot be beaten: the ceiling's inputs (bandwidth, bytes) are wrong.
        status = "failed"
        message = f"measured {measured:.1f} tok/s beats the ceiling {top:.1f} tok/s: the ceiling's inputs are wrong"
    if top is not None:
        message += f" (ceiling {top:.1f} tok/s from {ceiling.bandwidth_source} {ceiling.bandwidth_gbs:g} GB/s"
        message += f", efficiency {efficiency:.0%})" if efficiency is not None else ")"
    results.append(
        CriterionResult(
            endpoint.name,
            "decode_throughput",
            status,
            measured,
            criteria.decode_tok_s_min,
            "tok/s",
            ceiling=top,
            efficiency=efficiency,
            message=message,
        )
    )

    scenario = _at_concurrency(report, criteria.concurrency)
    if scenario is None:
        results.append(
            CriterionResult(
                endpoint.name,
                "success_at_concurrency",
                "no data",
                None,
                criteria.success_rate_min,
                "ratio",
                message="no sweep at or below the concurrency",
            )
        )
    else:
        ok = scenario.success_rate >= criteria.success_rate_min
        results.append(
            CriterionResult(
                endpoint.name,
                "success_at_concurrency",
                "passed" if ok else "failed",
                scenario.success_rate,
                criteria.success_rate_min,
                "ratio",
                message=f"{scenario.success_rate:.0%} of requests succeeded at {scenario.concurrency} concurrent "
                f"(aggregate {scenario.aggregate_output_tok_s:.1f} tok/s)",
            )
        )

    if endpoint.key_name is None:
        results.append(
            CriterionResult(
                endpoint.name,
                "auth_enforced",
                "failed",
                None,
                None,
                "status",
                message="no key configured: anyone who reaches the port can use it",
            )
        )
    else:
        rejected = unauthenticated_status in (401, 403)
        results.append(
            CriterionResult(
                endpoint.name,
                "auth_enforced",
                "passed" if rejected else "failed",
                unauthenticated_status,
                401,
                "status",
                message=f"a request without the key answered {unauthenticated_status}",
            )
        )

    if not endpoint.gpu or criteria.gpu_utilization_min_pct is None:
        results.append(
            CriterionResult(
                endpoint.name,
                "gpu_utilization",
                "not judged",
                gpu_utilization_pct,
                criteria.gpu_utilization_min_pct,
                "%",
                message="no GPU criterion for this endpoint",
            )
        )
    elif not gpu_measured:
        results.append(
            CriterionResult(
                endpoint.name,
                "gpu_utilization",
                "not judged",
                None,
                criteria.gpu_utilization_min_pct,
                "%",
                message="no NVML on this host",
            )
        )
    else:
        status = criterion_status(gpu_utilization_pct, criteria.gpu_utilization_min_pct, 100.0, higher_is_better=True)
        results.append(
            CriterionResult(
                endpoint.name,
                "gpu_utilization",
                status,
                gpu_utilization_pct,
                criteria.gpu_utilization_min_pct,
                "%",
                message=f"mean {gpu_utilization_pct}% during the benchmark",
            )
        )
    from idp_ops.validation.goodput import evaluate_goodput  # goodput.py builds CriterionResults

    results.append(evaluate_goodput(endpoint, report, ceiling=ceiling))
    return results


def evaluate_prefix_cache(endpoint, report, *, configured: bool | None, why: str, ceiling) -> CriterionResult:
    """``prefix_cache_works``: where the compose file turns caching on, warm TTFT p50 <= ratio x cold p50
    and the server reports cached tokens. Physics: no TTFT beats one decode step (1000 / ceiling ms)."""
    from idp_ops.physics.formulas import min_step_ms

    ratio_max = endpoint.acceptance.prefix_cache_ttft_ratio_max
    cold, warm = report.cold_ttft.get("p50"), report.warm_ttft.get("p50")
    figures = (
        f"warm TTFT p50 {warm:.1f} ms vs cold {cold:.1f} ms (ratio {report.ttft_ratio:.2f}, at most {ratio_max:g})"
        if cold is not None and warm is not None
        else "no successful cold and warm requests"
    )
    hits = (
        f"server cache hit {report.warm_hit_rate:.0%} of warm prompt tokens"
        if report.warm_hit_rate is not None
        else "server reports no cached-token count"
    )
    base = dict(endpoint=endpoint.name, criterion="prefix_cache_works", unit="ratio", threshold=ratio_max)
    if configured is False:
        return CriterionResult(
            **base,
            status="not judged",
            measured=report.ttft_ratio,
            message=f"caching is off by configuration ({why}); {figures}",
        )
    if report.problems or report.ttft_ratio is None:
        return CriterionResult(
            **base, status="no data", measured=report.ttft_ratio, message="; ".join(report.problems) or figures
        )
    floor = min_step_ms(ceiling.tok_s) if ceiling else None
    if floor is not None and ratio_max * cold < floor:
        return CriterionResult(
            **base,
            status="unattainable",
            measured=report.ttft_ratio,
            ceiling=round(floor, 3),
            message=f"{ratio_max:g} x cold TTFT ({ratio_max * cold:.1f} ms) is below one decode step ({floor:.1f} ms)",
        )
    cached = report.warm_hit_rate is None or report.warm_hit_rate > 0
    ok = report.ttft_ratio <= ratio_max and cached
    message = f"{figures}; {hits}; {why}"
    if not cached:
        message = f"the server served no warm prompt token from its cache: {message}"
    return CriterionResult(
        **base,
        status="passed" if ok else "failed",
        measured=report.ttft_ratio,
        ceiling=round(floor, 3) if floor is not None else None,
        message=message,
    )


def evaluate_depth(endpoint, report) -> CriterionResult:
    """``context_depth_measured``: every depth measured at its exact token count, decode below its ceiling."""
    base = dict(endpoint=endpoint.name, criterion="context_depth_measured", unit="tok/s", threshold=None)
    points = report.points
    deepest = points[-1] if points else None
    rows = "; ".join(
        f"{p.depth} tok: TTFT {p.ttft_ms or 0:.0f} ms, prefill {p.prefill_tok_s or 0:.0f} tok/s, decode "
        f"{p.decode_tok_s or 0:.1f} tok/s" + (f" (ceiling {p.ceiling_tok_s:.1f})" if p.ceiling_tok_s else "")
        for p in points
    )
    problems = report.problems + [q for p in points for q in p.problems]
    if problems:
        status = "no data" if not points else "failed"
        return CriterionResult(**base, status=status, measured=None, message="; ".join(problems))
    return CriterionResult(
        **base,
        status="passed",
        measured=deepest.decode_tok_s,
        ceiling=deepest.ceiling_tok_s,
        efficiency=(deepest.decode_tok_s / deepest.ceiling_tok_s)
        if deepest.decode_tok_s and deepest.ceiling_tok_s
        else None,
        message=rows,
    )


class GpuUtilizationSampler:
    """Samples GPU utilization through NVML in a thread while a benchmark runs."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.values: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source = None

    def __enter__(self) -> GpuUtilizationSampler:
        from idp_ops.thermal.telemetry import NvmlSource, TelemetryError

        try:
            # Utilization only: no energy counter, no XID event set (the thermal watch owns those).
            self._source = NvmlSource(read_energy=False, watch_xid=False, health=False)
        except TelemetryError as exc:
            self.error = str(exc)
            return self
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        from idp_ops.thermal.telemetry import TelemetryError

        while not self._stop.wait(self.interval_s):
            try:
                self.values += [s.utilization_pct for s in self._source.sample() if s.utilization_pct is not None]
            except TelemetryError as exc:
                self.error = str(exc)
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._source:
            self._source.close()

    @property
    def measured(self) -> bool:
        return self._source is not None and bool(self.values)

    @property
    def mean(self) -> float | None:
        return round(statistics.fmean(self.values), 1) if self.values else None


# -- history -----------------------------------------------------------------


def record_benchmark(
    con: duckdb.DuckDBPyConnection,
    night: date,
    report,
    ceiling_tok_s: float | None,
    *,
    served_model: str | None = None,
) -> None:
    """Replace this night's rows for the endpoint: re-running a night never duplicates.

    ``served_model``: what the server said it served (models.switch.served_model_name); else the report's,
    else the configured model, which follows a switch (models/selection.py). Trends keep one series per
    endpoint and served model.
    """
    served_model = served_model or getattr(report, "served_model", None) or report.model
    top = max(report.sweep, key=lambda s: s.concurrency) if report.sweep else None
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM bench_samples WHERE night = ? AND endpoint = ?", [night, report.endpoint])
        con.execute("DELETE FROM bench_runs WHERE night = ? AND endpoint = ?", [night, report.endpoint])
        history.insert_rows(
            con,
            "bench_runs",
            [
                {
                    "night": night,
                    "endpoint": report.endpoint,
                    "protocol": report.protocol,
                    "url": report.url,
                    "model": report.model,
                    "served_model": served_model,
                    "started_at": report.started_at,
                    "decode_tok_s": report.decode_tok_s,
                    "server_decode_tok_s": report.server_decode_tok_s,
                    "ttft_p50_ms": _p(report, "warm_ttft", "ttft_ms", "p50"),
                    "ttft_p95_ms": _p(report, "warm_ttft", "ttft_ms", "p95"),
                    "itl_p50_ms": _p(report, "decode", "itl_ms", "p50"),
                    "tpot_p50_ms": _p(report, "decode", "tpot_ms", "p50"),
                    "e2e_p50_ms": _p(report, "decode", "e2e_ms", "p50"),
                    "max_concurrency": top.concurrency if top else None,
                    "success_rate_at_max": top.success_rate if top else None,
                    "aggregate_tok_s_at_max": top.aggregate_output_tok_s if top else None,
                    "ceiling_tok_s": ceiling_tok_s,
                    "errors": json.dumps(report.errors_by_kind, sort_keys=True),
                    "sweep": json.dumps(
                        [
                            {
                                "concurrency": s.concurrency,
                                "success_rate": s.success_rate,
                                "aggregate_tok_s": s.aggregate_output_tok_s,
                            }
                            for s in report.sweep
                        ]
                    ),
                    "ok": report.ok,
                }
            ],
        )
        rows = []
        for scenario in [report.warm_ttft, report.decode, *report.sweep]:
            for sample in scenario.samples:
                itl = statistics.median(sample.itl_ms) if sample.itl_ms else None
                rows.append(
                    {
                        "night": night,
                        "endpoint": report.endpoint,
                        "scenario": scenario.scenario,
                        "concurrency": scenario.concurrency,
                        "idx": sample.index,
                        "started_at": sample.started_at,
                        "ttft_ms": sample.ttft_ms,
                        "e2e_ms": sample.e2e_ms,
                        "tpot_ms": sample.tpot_ms,
                        "itl_p50_ms": itl,
                        "output_tokens": sample.output_tokens,
                        "status": sample.status,
                        "error": sample.error,
                    }
                )
        history.insert_rows(con, "bench_samples", rows)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def record_load_test(con: duckdb.DuckDBPyConnection, night: date, endpoint: str, result) -> None:
    con.execute("DELETE FROM load_tests WHERE night = ? AND endpoint = ?", [night, endpoint])
    history.insert_rows(
        con,
        "load_tests",
        [
            {
                "night": night,
                "endpoint": endpoint,
                "started_at": datetime.now(UTC),
                "users": result.users,
                "run_time_s": result.run_time_s,
                "requests": result.requests,
                "failures": result.failures,
                "failures_5xx": result.server_errors,
                "rps": result.rps,
                "p50_ms": result.p50_ms,
                "p95_ms": result.p95_ms,
                "failures_by_status": json.dumps(result.failures_by_status, sort_keys=True),
                "ok": result.ok,
            }
        ],
    )
