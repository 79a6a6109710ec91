"""Thermal assets: the spool the sensor writes, ingested into DuckDB with hourly rollups."""

from datetime import UTC, datetime, timedelta

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSelection,
    DagsterRunStatus,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    asset,
    define_asset_job,
    in_process_executor,
    load_asset_checks_from_current_module,
    load_assets_from_current_module,
    schedule,
    sensor,
)

from idp_ops.history import database as history
from idp_ops.last_good_settings import snapshot_path
from idp_ops.resources import SettingsResource
from idp_ops.settings import SettingsError, load_settings
from idp_ops.stack.defs import containment_job
from idp_ops.tables import markdown_table
from idp_ops.thermal.policy import PolicyConfig
from idp_ops.thermal.store import insert_samples, rollup_day
from idp_ops.thermal.watch import (
    AlertSink,
    ContainRequest,
    LiveSources,
    Spool,
    WatchState,
    record_tick,
    replay_source,
    retry_failed,
    settings_tick,
)

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
    day = datetime.fromisoformat(context.partition_key).replace(tzinfo=UTC)
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
    now = datetime.now(UTC)
    # GPU temperatures only: fresh CPU samples must not hide a blind GPU watch. Samples
    # dated ahead of now (a clock stepped back since) prove nothing about now.
    latest = spool.latest_ts(gpu_only=True, not_after=now + timedelta(seconds=cfg.thermal.sensor_interval_s))
    age = now - latest if latest else None
    fresh = age is not None and age <= stale_after
    columns = [
        "hour",
        "device",
        "samples",
        "min_c",
        "avg_c",
        "max_c",
        "seconds_above_warn",
        "seconds_above_contain",
        "throttle_seconds",
        "energy_kwh",
    ]
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


# -- job, schedule and sensor --------------------------------------------------

thermal_ingest_job = define_asset_job(
    "thermal_ingest_job",
    selection=AssetSelection.groups("thermal"),
    description="Ingest the thermal spool (samples the sensor and the guard wrote) into DuckDB and roll it up hourly.",
    executor_def=in_process_executor,
)


@schedule(
    job=thermal_ingest_job,
    cron_schedule="*/15 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Ingest today's thermal spool every 15 minutes; shortly after midnight, finish yesterday's.",
)
def thermal_ingest_schedule(context: ScheduleEvaluationContext):
    now = context.scheduled_execution_time
    days = [now.date()]
    if now.hour == 0 and now.minute < 15:
        days.insert(0, (now - timedelta(days=1)).date())
    for day in days:
        key = day.isoformat()
        yield RunRequest(run_key=f"thermal-{key}-{now:%H%M}", partition_key=key)


EPISODE_TAG, ATTEMPT_TAG = "idp_ops/episode", "idp_ops/attempt"


def _sensor_interval_s() -> int:
    # Read once at import: Dagster needs the interval when it loads the location.
    # Invalid settings surface later, in the tick, with the field's name.
    try:
        return load_settings().thermal.sensor_interval_s
    except SettingsError:
        return 30


# NVML is initialised once per code-server process (nvmlInit costs ~9 ms; a sample
# 12 µs), reopened on a later tick when it was missing or went away.
_live = LiveSources()


def _outcome(context: SensorEvaluationContext):
    """How a containment attempt's run ended: "succeeded", "failed", or None (not yet / none)."""

    def outcome(request: ContainRequest) -> str | None:
        runs = context.instance.get_runs(
            RunsFilter(
                job_name=containment_job.name, tags={EPISODE_TAG: request.episode, ATTEMPT_TAG: str(request.attempt)}
            ),
            limit=1,
        )
        if not runs:
            return None
        if runs[0].status == DagsterRunStatus.SUCCESS:
            return "succeeded"
        if runs[0].status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
            return "failed"
        return None

    return outcome


def _run_request(request: ContainRequest, snapshot: str) -> RunRequest:
    decision = request.decision
    return RunRequest(
        # One run per attempt: a retried or duplicate tick reuses the key, a failed attempt gets a new one.
        run_key=request.run_key,
        run_config={
            "ops": {
                "stop_gpu_services": {
                    "config": {
                        "reason": decision.reason,
                        "device": decision.device,
                        "temperature_c": decision.temperature_c,
                        "sample_timestamp": decision.ts.isoformat(),
                        "episode": request.episode,
                        "attempt": request.attempt,
                        "settings_snapshot": snapshot,
                    }
                }
            }
        },
        tags={EPISODE_TAG: request.episode, ATTEMPT_TAG: str(request.attempt)},
    )


@sensor(
    name="thermal_sensor",
    job=containment_job,
    minimum_interval_seconds=_sensor_interval_s(),
    default_status=DefaultSensorStatus.RUNNING,
    description="Samples GPU (NVML) and CPU (hwmon) temperatures into the thermal spool, alerts, "
    "and launches containment_job once per overheating episode (again, with a new run key, until the "
    "stop is verified).",
)
def thermal_sensor(context: SensorEvaluationContext, settings: SettingsResource) -> SensorResult:
    # Nothing slow or fallible before the RunRequests: settings fall back to the last good
    # ones, sampling tolerates a lost GPU, and the spool/alert writes come after.
    cfg, settings_problem = settings.load_or_last_good()
    thermal = cfg.thermal
    state = WatchState.from_json(context.cursor)
    if thermal.replay_csv is not None:
        sources, skipped, replay = [], [], replay_source(thermal.replay_csv, state.replay_index)
    else:
        (sources, skipped), replay = _live.current(), None
    result = settings_tick(cfg, state, sources, skipped=skipped, replay=replay, settings_problem=settings_problem)
    retry_failed(result, _outcome(context), datetime.now(UTC))
    run_requests = [_run_request(request, str(snapshot_path(cfg))) for request in result.to_contain]

    problems = record_tick(
        result,
        Spool(cfg.thermal_spool_dir),
        AlertSink(cfg.alerts_log, thermal.webhook_url, thermal.webhook_timeout_s),
        origin="thermal_sensor",
    )
    _live.drop(result.failed_sources)
    for line in result.notes + problems + ([settings_problem] if settings_problem else []):
        context.log.warning(line)
    for decision in result.decisions:
        context.log.warning(f"{decision.action} {decision.device} at {decision.temperature_c} °C: {decision.reason}")
    if run_requests:
        return SensorResult(run_requests=run_requests, cursor=result.state.to_json())
    gpu = [s.temperature_c for s in result.samples if s.source != "hwmon" and s.temperature_c is not None]
    summary = f"{len(result.samples)} samples, hottest GPU {max(gpu, default=None)} °C, no containment"
    if result.skipped:
        summary += "; " + "; ".join(result.skipped)
    return SensorResult(skip_reason=summary, cursor=result.state.to_json())


defs = Definitions(
    assets=load_assets_from_current_module(),
    asset_checks=load_asset_checks_from_current_module(),
    jobs=[thermal_ingest_job],
    schedules=[thermal_ingest_schedule],
    sensors=[thermal_sensor],
)
