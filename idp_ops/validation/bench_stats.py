"""Statistics of the streaming benchmark: percentiles from raw samples, and its human summary."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

PERCENTILE_METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")
_QUANTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0))


def percentiles(values: Iterable[float]) -> dict[str, float]:
    """p50/p90/p95/p99, mean and n of raw samples.

    Linear interpolation between closest ranks (numpy's default "linear" method,
    Hyndman & Fan type 7): p = v[(n-1)·q] interpolated. Empty input gives ``{"n": 0}``.
    """
    data = sorted(float(v) for v in values if v is not None and not math.isnan(v))
    if not data:
        return {"n": 0}
    result: dict[str, float] = {}
    last = len(data) - 1
    for name, q in _QUANTILES:
        position = last * q / 100
        low = math.floor(position)
        high = min(low + 1, last)
        result[name] = round(data[low] + (data[high] - data[low]) * (position - low), 3)
    result["mean"] = round(statistics.fmean(data), 3)
    result["n"] = len(data)
    return result


def sample_percentiles(samples: Sequence[Any]) -> dict[str, dict[str, float]]:
    return {
        "ttft_ms": percentiles(s.ttft_ms for s in samples if s.ttft_ms is not None),
        # Every gap of every stream: a stall in one request shows in the tail.
        "itl_ms": percentiles(gap for s in samples for gap in s.itl_ms),
        "tpot_ms": percentiles(s.tpot_ms for s in samples if s.tpot_ms is not None),
        "e2e_ms": percentiles(s.e2e_ms for s in samples if s.e2e_ms is not None),
    }


def median_or_none(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return round(statistics.median(data), 3) if data else None


def summary_lines(report: Any) -> list[str]:
    """A human summary: percentiles per scenario, decode rate, sweep table, problems."""
    lines = [
        f"{report.endpoint} ({report.protocol}, {report.url}, model {report.model}): "
        f"{len(report.samples)} requests in {report.wall_s:.1f} s — {'OK' if report.ok else 'FAILED'}"
    ]

    def row(label: str, p: dict[str, float]) -> str:
        if not p.get("n"):
            return f"  {label:<8} (no samples)"
        return (
            f"  {label:<8} p50 {p['p50']:>9.1f}  p90 {p['p90']:>9.1f}  p95 {p['p95']:>9.1f}  "
            f"p99 {p['p99']:>9.1f}  mean {p['mean']:>9.1f}  n {p['n']}"
        )

    for scenario in (report.warm_ttft, report.decode):
        lines.append(f" {scenario.scenario} (ms):")
        lines += [
            row(metric.removesuffix("_ms").upper(), scenario.percentiles[metric]) for metric in PERCENTILE_METRICS
        ]
    server = f" (server says {report.server_decode_tok_s:.1f})" if report.server_decode_tok_s else ""
    decode = f"{report.decode_tok_s:.1f}" if report.decode_tok_s else "n/a"
    lines.append(f" single-stream decode: {decode} tok/s{server}")
    if report.sweep:
        lines.append(" sweep: conc  reqs  success  agg tok/s  TTFT p50  TTFT p95  TPOT p50   E2E p95")
        for s in report.sweep:
            p = s.percentiles

            def get(metric: str, q: str, p: dict = p) -> str:
                value = p[metric].get(q)
                return f"{value:>8.1f}" if value is not None else f"{'-':>8}"

            lines.append(
                f"        {s.concurrency:>4}  {s.requests:>4}  {s.success_rate * 100:>6.1f}%  {s.aggregate_output_tok_s:>9.1f}"
                f"  {get('ttft_ms', 'p50')}  {get('ttft_ms', 'p95')}  {get('tpot_ms', 'p50')}  {get('e2e_ms', 'p95')}"
            )
    lines += [f" PROBLEM: {p}" for p in report.problems]
    return lines
