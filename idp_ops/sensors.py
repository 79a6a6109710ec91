"""Sensors: what acts without anyone watching."""

import contextlib

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, sensor

from idp_ops.config import SettingsError, load_settings
from idp_ops.core.stack import read_latch
from idp_ops.core.telemetry import TelemetryError, open_sources
from idp_ops.core.thermal_policy import PolicyConfig
from idp_ops.core.thermal_watch import AlertSink, Spool, WatchState, replay_source, watch_tick
from idp_ops.jobs import containment_job
from idp_ops.resources import SettingsResource


def _sensor_interval_s() -> int:
    # Read once at import: Dagster needs the interval when it loads the location.
    # Invalid settings surface later, in the tick, with the field's name.
    try:
        return load_settings().thermal.sensor_interval_s
    except SettingsError:
        return 30


# NVML is initialised once per code-server process (nvmlInit costs ~9 ms; a
# sample 12 µs), and re-opened only after an error says the driver went away.
_live: dict = {}


def _live_sources():
    if "sources" not in _live:
        _live["sources"], _live["skipped"] = open_sources(enable_nvml=True, enable_hwmon=True)
    return _live["sources"], _live["skipped"]


def _drop_live_sources() -> None:
    for source in _live.pop("sources", []):
        # Closing a source whose driver is gone fails too; we are reopening anyway.
        with contextlib.suppress(TelemetryError):
            source.close()
    _live.pop("skipped", None)


@sensor(
    name="thermal_sensor",
    job=containment_job,
    minimum_interval_seconds=_sensor_interval_s(),
    default_status=DefaultSensorStatus.RUNNING,
    description="Samples GPU (NVML) and CPU (hwmon) temperatures into the thermal spool, alerts, "
    "and launches containment_job once per overheating episode.",
)
def thermal_sensor(context: SensorEvaluationContext, settings: SettingsResource) -> SensorResult:
    cfg = settings.load()
    thermal = cfg.thermal
    state = WatchState.from_json(context.cursor)
    if thermal.replay_csv is not None:
        sources, skipped, replay = [], [], replay_source(thermal.replay_csv, state.replay_index)
    else:
        (sources, skipped), replay = _live_sources(), None
    if not sources and replay is None:
        return SensorResult(skip_reason="no telemetry source: " + "; ".join(skipped), cursor=context.cursor)
    try:
        result = watch_tick(
            sources,
            PolicyConfig.from_thresholds(thermal),
            state,
            Spool(cfg.thermal_spool_dir),
            AlertSink(cfg.alerts_log, thermal.webhook_url, thermal.webhook_timeout_s),
            latch_present=read_latch(cfg) is not None,
            origin="thermal_sensor",
            replay=replay,
            replay_rows=thermal.replay_rows_per_tick,
        )
    except TelemetryError as exc:
        _drop_live_sources()
        # The cursor is kept: the next tick resumes the same policy state.
        return SensorResult(skip_reason=f"telemetry error: {exc}", cursor=context.cursor)
    for error in result.alert_errors:
        context.log.warning(f"alert delivery: {error} (the alert is in {cfg.alerts_log})")
    for decision in result.decisions:
        context.log.warning(f"{decision.action} {decision.device} at {decision.temperature_c} °C: {decision.reason}")
    run_requests = [
        RunRequest(
            # One containment per episode: a retried or duplicate tick reuses the key.
            run_key=f"contain:{decision.episode}",
            run_config={
                "ops": {
                    "stop_gpu_services": {
                        "config": {
                            "reason": decision.reason,
                            "device": decision.device,
                            "temperature_c": decision.temperature_c,
                            "sample_timestamp": decision.ts.isoformat(),
                        }
                    }
                }
            },
            tags={"idp_ops/episode": decision.episode},
        )
        for decision in result.to_contain
    ]
    if run_requests:
        return SensorResult(run_requests=run_requests, cursor=result.state.to_json())
    hottest = max((s.temperature_c for s in result.samples if s.temperature_c is not None), default=None)
    summary = f"{len(result.samples)} samples, hottest {hottest} °C, no containment"
    if result.skipped:
        summary += "; " + "; ".join(result.skipped)
    return SensorResult(skip_reason=summary, cursor=result.state.to_json())


sensors = [thermal_sensor]
