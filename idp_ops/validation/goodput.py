"""Goodput: the share of requests that met their per-request SLOs, at each concurrency level.

Throughput counts every token, including those of a request that waited ten seconds for
its first one; a user only counts the requests that felt right. A request is *good*
when it succeeded, its TTFT <= ``slo_ttft_ms`` and the p95 of its own inter-token
gaps <= ``slo_itl_ms`` (DistServe's goodput, vLLM's ``--goodput``). The check judges
every sweep level up to the endpoint's criterion concurrency against ``goodput_min``.

An SLO that asks for a token faster than one decode step can take (1000 / single-stream
ceiling ms: every token reads every weight once) is *unattainable*, not failed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date

from idp_ops.physics.formulas import min_step_ms
from idp_ops.validation.bench_stats import percentiles


@dataclass
class GoodputLevel:
    concurrency: int
    arrival: str
    arrival_rate: float | None
    requests: int
    met: int
    share: float | None
    # Output tokens of good requests per second of the scenario's wall time.
    goodput_tok_s: float | None
    missed_ttft: int
    missed_itl: int
    failed: int

    def as_dict(self) -> dict:
        return asdict(self)


def request_meets_slo(sample, slo_ttft_ms: float | None, slo_itl_ms: float | None) -> tuple[bool, bool, bool]:
    """(good, TTFT within its SLO, ITL p95 within its SLO) of one request; a failed request is not good."""
    if not sample.ok or sample.ttft_ms is None:
        return False, False, False
    ttft_ok = slo_ttft_ms is None or sample.ttft_ms <= slo_ttft_ms
    itl = percentiles(sample.itl_ms).get("p95") if sample.itl_ms else None
    itl_ok = slo_itl_ms is None or itl is None or itl <= slo_itl_ms  # one token: no gap to judge
    return ttft_ok and itl_ok, ttft_ok, itl_ok


def goodput_levels(report, slo_ttft_ms: float | None, slo_itl_ms: float | None) -> list[GoodputLevel]:
    levels = []
    for scenario in report.sweep:
        met = missed_ttft = missed_itl = failed = tokens = 0
        for sample in scenario.samples:
            good, ttft_ok, itl_ok = request_meets_slo(sample, slo_ttft_ms, slo_itl_ms)
            if not sample.ok:
                failed += 1
                continue
            met += good
            missed_ttft += not ttft_ok
            missed_itl += not itl_ok
            tokens += (sample.output_tokens or 0) if good else 0
        n = len(scenario.samples)
        levels.append(
            GoodputLevel(
                concurrency=scenario.concurrency,
                arrival=getattr(scenario, "arrival", "closed"),
                arrival_rate=getattr(scenario, "arrival_rate", None),
                requests=n,
                met=met,
                share=round(met / n, 4) if n else None,
                goodput_tok_s=round(tokens / scenario.wall_s, 3) if scenario.wall_s > 0 else None,
                missed_ttft=missed_ttft,
                missed_itl=missed_itl,
                failed=failed,
            )
        )
    return levels


def evaluate_goodput(endpoint, report, *, ceiling):
    """The ``goodput`` criterion of one endpoint (a CriterionResult of criteria.py)."""
    from idp_ops.validation.criteria import CriterionResult

    criteria = endpoint.acceptance
    slo_ttft, slo_itl = criteria.slo_ttft_ms, criteria.slo_itl_ms
    if slo_ttft is None and slo_itl is None:
        return CriterionResult(
            endpoint.name, "goodput", "not judged", None, criteria.goodput_min, "ratio", message="no SLO set"
        )
    levels = goodput_levels(report, slo_ttft, slo_itl)
    judged = [lv for lv in levels if lv.concurrency <= criteria.concurrency]
    slos = " and ".join(
        part
        for part in (
            f"TTFT <= {slo_ttft:g} ms" if slo_ttft is not None else "",
            f"ITL p95 <= {slo_itl:g} ms" if slo_itl is not None else "",
        )
        if part
    )
    table = ", ".join(f"c{lv.concurrency}: {lv.met}/{lv.requests}" for lv in levels)
    floor = min_step_ms(ceiling.tok_s) if ceiling else None
    if floor is not None:
        too_low = [
            f"{name} SLO {value:g} ms"
            for name, value in (("TTFT", slo_ttft), ("ITL", slo_itl))
            if value is not None and value < floor
        ]
        if too_low:
            return CriterionResult(
                endpoint.name,
                "goodput",
                "unattainable",
                None,
                criteria.goodput_min,
                "ratio",
                ceiling=round(floor, 3),
                message=f"{' and '.join(too_low)} below one decode step ({floor:.1f} ms at the "
                f"{ceiling.tok_s:.1f} tok/s ceiling): no request can meet it ({table})",
            )
    if not judged:
        return CriterionResult(
            endpoint.name,
            "goodput",
            "no data",
            None,
            criteria.goodput_min,
            "ratio",
            message=f"no sweep level at or below concurrency {criteria.concurrency}",
        )
    worst = min(judged, key=lambda lv: (lv.share if lv.share is not None else -1.0, -lv.concurrency))
    status = "passed" if worst.share is not None and worst.share >= criteria.goodput_min else "failed"
    message = (
        f"worst {worst.share:.0%} at c{worst.concurrency} ({worst.missed_ttft} missed TTFT, {worst.missed_itl} "
        f"missed ITL, {worst.failed} failed) vs >= {criteria.goodput_min:.0%} meeting {slos}; all levels: {table}"
    )
    if floor is not None:
        message += f" (one decode step >= {floor:.1f} ms)"
    return CriterionResult(
        endpoint.name,
        "goodput",
        status,
        worst.share,
        criteria.goodput_min,
        "ratio",
        ceiling=round(floor, 3) if floor is not None else None,
        message=message,
    )


def record_goodput(con, night: date, report, endpoint) -> int:
    """Replace this night's goodput rows for the endpoint (one per sweep level)."""
    from idp_ops.history import database as history

    criteria = endpoint.acceptance
    con.execute("DELETE FROM goodput WHERE night = ? AND endpoint = ?", [night, report.endpoint])
    if criteria.slo_ttft_ms is None and criteria.slo_itl_ms is None:
        return 0
    rows = [
        {
            "night": night,
            "endpoint": report.endpoint,
            "concurrency": lv.concurrency,
            "arrival": lv.arrival,
            "arrival_rate": lv.arrival_rate,
            "requests": lv.requests,
            "met": lv.met,
            "share": lv.share,
            "slo_ttft_ms": criteria.slo_ttft_ms,
            "slo_itl_ms": criteria.slo_itl_ms,
            "goodput_tok_s": lv.goodput_tok_s,
        }
        for lv in goodput_levels(report, criteria.slo_ttft_ms, criteria.slo_itl_ms)
    ]
    return history.insert_rows(con, "goodput", rows)
