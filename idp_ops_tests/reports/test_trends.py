"""Trends from a seeded history: a planted regression is found, noise and improvements are not."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from idp_ops.history import database as history
from idp_ops.reports.trends import (
    NOT_ENOUGH_BENCH,
    TrendSettings,
    analyse_runs,
    latest_per_endpoint,
    load_bench_runs,
    thermal_daily,
    throttle_by_reason,
)
from idp_ops_harness.history_seed import FIRST_NIGHT, nightly_history, seed_bench_runs, seed_thermal_hourly


def test_planted_regressions_are_found_and_named(tmp_path):
    file = tmp_path / "h.duckdb"
    seed_bench_runs(file, nightly_history())
    report = analyse_runs(load_bench_runs(file), current_ceilings={"cpu": 40.0})
    assert report.runs == 24 and report.endpoints == ["cpu", "gpu"] and report.enough_data and not report.message
    found = {(s.endpoint, s.metric): s for s in report.regressions}
    assert set(found) == {("gpu", "decode_tok_s"), ("cpu", "ttft_p95_ms")}

    decode = found[("gpu", "decode_tok_s")]
    # Trailing median of nights 4..10 (the dip on night 5 is outvoted): 80 x median(0.99, 0.5, 1.02, 0.98, 1, 1.01, 0.99).
    assert decode.value == pytest.approx(64.0)
    assert decode.baseline == pytest.approx(79.2)
    assert decode.change_pct == pytest.approx((64.0 / 79.2 - 1) * 100)
    assert decode.efficiency == pytest.approx(0.64)
    assert "gpu decode_tok_s" in decode.describe() and "regression" in decode.describe()

    ttft = found[("cpu", "ttft_p95_ms")]
    assert ttft.value == pytest.approx(70 * 1.3) and ttft.baseline == pytest.approx(70.0)

    steady = {(s.endpoint, s.metric): s for s in report.latest}
    assert steady[("gpu", "ttft_p50_ms")].status == "ok"
    assert steady[("gpu", "aggregate_tok_s_at_max")].status == "ok"
    # No ceiling stored for 'cpu': today's ceiling stands in.
    assert steady[("cpu", "decode_tok_s")].efficiency == pytest.approx(30.0 / 40.0)
    # The night-5 dip was a regression then, and is marked in the series for the plot.
    points = report.points
    dip = points[(points.endpoint == "gpu") & (points.metric == "decode_tok_s")].iloc[5]
    assert bool(dip["regression"]) and dip["value"] == pytest.approx(40.0)


def test_noise_and_improvements_are_not_regressions(tmp_path):
    file = tmp_path / "h.duckdb"
    rows = []
    for i in range(8):
        last = i == 7
        rows.append({"night": FIRST_NIGHT + timedelta(days=i), "endpoint": "e",
                     "decode_tok_s": 50.0 * (1.5 if last else 1.0),  # faster: better
                     "ttft_p50_ms": 100.0 * (0.5 if last else 1.0),  # quicker: better
                     "ttft_p95_ms": 200.0 * (1.09 if last else 1.0)})  # 9 % worse: inside 10 %  # fmt: skip
    seed_bench_runs(file, rows)
    report = analyse_runs(load_bench_runs(file))
    assert report.regressions == []
    assert {s.metric: s.status for s in report.latest} == {
        "decode_tok_s": "ok", "ttft_p50_ms": "ok", "ttft_p95_ms": "ok"
    }  # fmt: skip
    stricter = analyse_runs(load_bench_runs(file), settings=TrendSettings(threshold=0.05))
    assert [(s.metric, round(s.change_pct, 1)) for s in stricter.regressions] == [("ttft_p95_ms", 9.0)]


def test_empty_or_short_history_says_not_enough_data(tmp_path):
    missing = analyse_runs(load_bench_runs(tmp_path / "absent.duckdb"))
    assert missing.runs == 0 and missing.message == NOT_ENOUGH_BENCH and not missing.enough_data
    assert missing.points.empty and missing.regressions == []

    file = tmp_path / "h.duckdb"
    with history.connect(file):
        pass  # schema, no rows
    empty = analyse_runs(load_bench_runs(file))
    assert empty.message == NOT_ENOUGH_BENCH and latest_per_endpoint(load_bench_runs(file)) == {}

    seed_bench_runs(file, [{"night": FIRST_NIGHT + timedelta(days=i), "endpoint": "e", "decode_tok_s": 10.0 / (i + 1)}
                           for i in range(3)])  # fmt: skip
    short = analyse_runs(load_bench_runs(file))
    # Even a 3x drop is not judged on two earlier runs.
    assert short.regressions == [] and short.message.startswith("not enough data")
    assert [s.status for s in short.latest] == ["not enough data"]
    assert latest_per_endpoint(load_bench_runs(file))["e"]["decode_tok_s"] == pytest.approx(10 / 3)


def test_thermal_days_sum_time_above_lines_throttle_and_energy(tmp_path):
    file = tmp_path / "h.duckdb"
    start = datetime(2026, 2, 1, tzinfo=UTC)
    rows = []
    for h in range(48):
        hot = h in (13, 14, 37)
        rows.append({"hour": start + timedelta(hours=h), "device": "gpu0", "max_c": 88.0 if hot else 60.0,
                     "seconds_above_warn": 600.0 if hot else 0.0, "seconds_above_contain": 60.0 if h == 14 else 0.0,
                     "throttle_seconds": json.dumps({"sw_power_cap": 30.0, "hw_slowdown": 10.0} if hot else {}),
                     "energy_kwh": 0.25})  # fmt: skip
    seed_thermal_hourly(file, rows)
    daily = thermal_daily(file)
    assert list(daily["day"].astype(str)) == ["2026-02-01", "2026-02-02"]
    first, second = daily.iloc[0], daily.iloc[1]
    assert first["hours"] == 24 and first["max_c"] == 88.0
    assert first["seconds_above_warn"] == 1200.0 and first["seconds_above_contain"] == 60.0
    assert first["throttle_seconds"] == 80.0 and second["throttle_seconds"] == 40.0
    assert first["energy_kwh"] == pytest.approx(6.0) and second["energy_kwh"] == pytest.approx(6.0)
    reasons = throttle_by_reason(file)
    assert [(r.reason, r.seconds) for r in reasons.itertuples()] == [("sw_power_cap", 90.0), ("hw_slowdown", 30.0)]
    # Days are the box's calendar days: at UTC-5 the first five hours fall on the day before.
    local = thermal_daily(file, tz="America/New_York")
    assert list(local["hours"]) == [5, 24, 19]

    assert thermal_daily(tmp_path / "absent.duckdb").empty
