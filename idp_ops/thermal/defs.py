"""Thermal assets: the spool the sensor writes, ingested into DuckDB with hourly rollups."""

from datetime import datetime, timedelta, timezone

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DailyPartitionsDefinition,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from idp_ops.tables import markdown_table
from idp_ops.history import database as history
from idp_ops.thermal.policy import PolicyConfig
from idp_ops.thermal.store import insert_samples, rollup_day
from idp_ops.thermal.watch import Spool
from idp_ops.resources import SettingsResource

thermal_days = DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)


@asset(
    group_name="thermal",
    partitions_def=thermal_days,
    description="GPU/CPU temperature, power, energy and throttle samples from the thermal spool, "
    "with hourly rollups (min/avg/max, time above each line, throttle seconds by reason, kWh).",
    # Ingested every 15 minutes by thermal_ingest_schedule; two missed hours means the daemon is down.
    freshness_policy=FreshnessPolicy.time_window(fail_window=timedelta(hours=2), warn_window=timedelta(hours=1)),
    check_specs=[
        AssetCheckSpec(
            "samples_are_fresh",
            asset="thermal_log",
            description="A new GPU temperature sample arrived within a few sensor intervals; otherwise the "
            "sensor or daemon is dead, or the watch is blind to the GPU.",
        )
    ],
)
def thermal_log(context: AssetExecutionContext, settings: SettingsResource) -> MaterializeResult:
    cfg = settings.load()
    day = datetime.fromisoformat(context.partition_key).replace(tzinfo=timezone.utc)
    spool = Spool(cfg.thermal_spool_dir)
    samples, problems = spool.read(day.date())
    for problem in problems[:20]:
        context.log.warning(f"spool: {problem}")
    config = PolicyConfig.from_thresholds(cfg.thermal)
    with history.connect(cfg.history_file) as con:
        new = insert_samples(con, samples)
        hourly = rollup_day(
            con,
            day,
            warn_c=cfg.thermal.warn_c,
            contain_c=config.contain_line(None),
            max_gap_s=3 * cfg.thermal.sensor_interval_s,
        )
    context.log.info(f"{context.partition_key}: {len(samples)} spooled samples, {new} new, {len(hourly)} hourly rows")

    stale_after = timedelta(seconds=cfg.thermal.stale_after_intervals * cfg.thermal.sensor_interval_s)
    now = datetime.now(timezone.utc)
    # GPU temperatures only: fresh CPU samples must not hide a blind GPU watch. Samples
    # dated ahead of now (a clock stepped back since) prove nothing about now.
    latest = spool.latest_ts(gpu_only=True, not_after=now + timedelta(seconds=cfg.thermal.sensor_interval_s))
    age = now - latest if latest else None
    fresh = age is not None and age <= stale_after
    columns = ["hour", "device", "samples", "min_c", "avg_c", "max_c", "seconds_above_warn", "seconds_above_contain",
               "throttle_seconds", "energy_kwh"]
    rows = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()} for row in hourly]
    return MaterializeResult(
        metadata={
            "spooled_samples": len(samples),
            "new_rows": new,
            "spool_problems": len(problems),
            "max_temperature_c": max((r["max_c"] for r in hourly if r["max_c"] is not None), default=None),
            "energy_kwh": round(sum(r["energy_kwh"] or 0 for r in hourly), 6),
            "hourly": MetadataValue.md(markdown_table(rows, columns) if rows else "No samples for this day."),
        },
        check_results=[
            AssetCheckResult(
                check_name="samples_are_fresh",
                passed=fresh,
                severity=AssetCheckSeverity.ERROR,
                metadata={
                    "latest_sample": latest.isoformat() if latest else "none",
                    "age_seconds": round(age.total_seconds(), 1) if age else -1.0,
                    "stale_after_seconds": stale_after.total_seconds(),
                },
                description=(
                    f"latest sample {age.total_seconds():.0f} s old" if age else "no sample in the spool at all"
                )
                + ("" if fresh else ": is the dagster-daemon (thermal_sensor) or the thermal guard running?"),
            )
        ],
    )
