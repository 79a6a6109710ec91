"""Sensors: what acts without anyone watching."""

from datetime import datetime, timezone

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from idp_ops.settings import SettingsError, load_settings
from idp_ops.last_good_settings import snapshot_path
from idp_ops.stack.deploy import read_latch
from idp_ops.thermal.policy import PolicyConfig
from idp_ops.thermal.watch import (
    AlertSink,
    ContainRequest,
    LiveSources,
    Spool,
    WatchState,
    record_tick,
    replay_source,
    retry_failed,
    watch_tick,
)
from idp_ops.jobs import containment_job
from idp_ops.resources import SettingsResource

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
            RunsFilter(job_name=containment_job.name, tags={EPISODE_TAG: request.episode, ATTEMPT_TAG: str(request.attempt)}),
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
    result = watch_tick(
        sources,
        PolicyConfig.from_thresholds(thermal),
        state,
        latch=read_latch(cfg),
        replay=replay,
        replay_rows=thermal.replay_rows_per_tick,
        skipped=skipped,
        settings_problem=settings_problem,
    )
    retry_failed(result, _outcome(context), datetime.now(timezone.utc))
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


sensors = [thermal_sensor]
