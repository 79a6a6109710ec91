"""ROI: the plan's own arithmetic, the payback its inputs really imply, and measured energy from history."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from idp_ops.reports.roi import (
    ENERGY_DUTY_CYCLE,
    ENERGY_MEASURED,
    build_report,
    measured_energy,
    recent_throughput,
    report_from_history,
)
from idp_ops.reports.trends import load_bench_runs
from idp_ops.settings import RoiSettings
from idp_ops_harness.history_seed import seed_bench_runs, seed_thermal_hourly

START = datetime(2026, 2, 1, tzinfo=UTC)
AWS, RUNPOD, LAMBDA = "AWS g5.xlarge (A10G)", "RunPod RTX 4090", "Lambda Labs RTX 4090"


def cents(value: float) -> float:
    return round(value, 2)


def test_the_plans_inputs_reproduce_its_arithmetic_and_the_payback_they_really_imply():
    report = build_report(RoiSettings())
    assert report.hardware_total_usd == 2500
    assert cents(report.hardware_monthly_usd) == 69.44
    e = report.electricity
    assert e.source == ENERGY_DUTY_CYCLE
    assert (cents(e.peak_usd), cents(e.idle_usd), cents(e.monthly_usd)) == (13.54, 5.76, 19.30)
    assert e.kwh_per_day == pytest.approx(0.47 * 8 + 0.1 * 16)
    assert cents(report.total_monthly_usd) == 88.74
    assert round(report.tco_usd) == 3195  # 3 years
    cloud = {c.provider: c for c in report.cloud}
    assert {p: c.monthly_usd for p, c in cloud.items()} == pytest.approx({RUNPOD: 312.0, LAMBDA: 296.0, AWS: 880.0})
    # payback = hardware / (cloud - operating): 2.9 to 9.0 months, not the plan's 8-11.
    for provider, months in ((AWS, 2.90), (RUNPOD, 8.54), (LAMBDA, 9.03)):
        assert cloud[provider].payback_months == pytest.approx(2500 / (cloud[provider].monthly_usd - 19.296))
        assert round(cloud[provider].payback_months, 2) == months
    # The plan's savings and 3-year figures follow from the same inputs.
    assert cents(cloud[RUNPOD].savings_monthly_usd) == 223.26 and cents(cloud[AWS].savings_monthly_usd) == 791.26
    assert (round(cloud[LAMBDA].tco_usd), round(cloud[AWS].tco_usd)) == (10656, 31680)
    assert (round(cloud[LAMBDA].net_savings_usd), round(cloud[AWS].net_savings_usd)) == (7461, 28485)
    # Nothing measured yet: no cost per token, and the report says why.
    assert report.token_costs == [] and any(n.startswith("not enough data") for n in report.notes)


def test_payback_is_never_when_the_cloud_costs_less_than_the_electricity():
    report = build_report(RoiSettings(cloud_usd_per_hour={"cheap": 0.01}))
    (cloud,) = report.cloud
    assert cloud.monthly_usd == pytest.approx(8.0) and cloud.payback_months is None


def seed_known_energy(file, hours: int = 48, kwh_per_hour: float = 0.2, start: datetime = START) -> None:
    seed_thermal_hourly(
        file, [{"hour": start + timedelta(hours=h), "device": "gpu0", "energy_kwh": kwh_per_hour} for h in range(hours)]
    )


def test_roi_from_a_seeded_history_with_known_energy_and_throughput(tmp_path):
    file = tmp_path / "h.duckdb"
    seed_known_energy(file)  # 2 days at 200 W: 4.8 kWh/day
    # Hours without an energy counter (a CPU sensor) neither add energy nor dilute the average.
    seed_thermal_hourly(
        file, [{"hour": START + timedelta(hours=h), "device": "cpu", "energy_kwh": None} for h in range(48)]
    )
    seed_bench_runs(
        file,
        [
            {
                "night": date(2026, 2, 1) + timedelta(days=i),
                "endpoint": "gpu",
                "decode_tok_s": 50.0 + (i % 3 - 1),
                "aggregate_tok_s_at_max": 400.0,
            }
            for i in range(9)
        ],  # fmt: skip
    )
    report = report_from_history(RoiSettings(), file)
    e = report.electricity
    assert e.source == ENERGY_MEASURED and "gpu0" in e.detail and "48 h" in e.detail
    assert e.kwh_per_day == pytest.approx(4.8)
    assert e.monthly_usd == pytest.approx(4.8 * 30 * 0.12)  # $17.28
    assert cents(e.monthly_usd) == 17.28 and e.peak_usd is None
    assert cents(report.total_monthly_usd) == 86.72  # 69.44 + 17.28
    aws = next(c for c in report.cloud if c.provider == AWS)
    assert aws.payback_months == pytest.approx(2500 / (880 - 17.28))
    assert round(aws.payback_months, 2) == 2.90
    # Cost per million output tokens: median of the last 7 nights at 8 h/day for 30 days.
    costs = {(t.endpoint, t.metric): t for t in report.token_costs}
    decode, aggregate = costs[("gpu", "decode_tok_s")], costs[("gpu", "aggregate_tok_s_at_max")]
    assert decode.tok_s == 50.0 and decode.runs == 7
    assert decode.tokens_per_month == pytest.approx(50 * 3600 * 8 * 30)  # 43.2 M
    assert decode.usd_per_million == pytest.approx(report.total_monthly_usd / 43.2)
    assert round(decode.usd_per_million, 2) == 2.01  # $86.72 / 43.2 M
    assert aggregate.usd_per_million == pytest.approx(report.total_monthly_usd / 345.6)
    assert not report.notes


def test_too_little_or_stale_energy_falls_back_to_the_duty_cycle_and_says_so(tmp_path):
    file = tmp_path / "h.duckdb"
    seed_known_energy(file, hours=5)
    energy, why = measured_energy(file)
    assert energy is None and why.startswith("only 5 h")
    report = report_from_history(RoiSettings(), file)
    assert report.electricity.source == ENERGY_DUTY_CYCLE and cents(report.electricity.monthly_usd) == 19.30
    assert any("duty cycle" in n and "only 5 h" in n for n in report.notes)

    # Only the newest 30 days count: an old month at 1 kWh/h does not set today's bill.
    seed_known_energy(file, hours=24 * 10, kwh_per_hour=1.0, start=START - timedelta(days=90))
    seed_known_energy(file, hours=48, kwh_per_hour=0.1)
    energy, _ = measured_energy(file)
    assert energy.hours == 48 and energy.kwh_per_day == pytest.approx(2.4)


def test_empty_history_gives_not_enough_data_instead_of_a_crash(tmp_path):
    for file in (tmp_path / "absent.duckdb", tmp_path / "empty.duckdb"):
        if file.name == "empty.duckdb":
            from idp_ops.history import database as history

            with history.connect(file):
                pass
        report = report_from_history(RoiSettings(), file)
        assert report.electricity.source == ENERGY_DUTY_CYCLE
        assert cents(report.total_monthly_usd) == 88.74
        assert report.token_costs == []
        assert any(n.startswith("not enough data") for n in report.notes)
        assert recent_throughput(load_bench_runs(file)) == []
