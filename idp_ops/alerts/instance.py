"""The thin adapter that reads what the dead-man checks need from a Dagster instance.

Last successful run of a job, the daemon's heartbeats, a sensor's last tick: read-only
queries, used by deadman_sensor (its own instance) and by the thermal guard (the instance
in DAGSTER_HOME, opened outside any Dagster process).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

# The daemons whose silence stops what runs unattended: schedules, sensors (thermal_sensor,
# the alert sensors) and the run queue. One dagster-daemon process runs them all.
WATCHED_DAEMONS = ("SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR")


def _utc(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None


def instance_home(configured: Path | None) -> tuple[Path | None, str | None]:
    """The instance directory (settings, else $DAGSTER_HOME), or None and why there is none."""
    home = configured or (Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else None)
    if home is None:
        return None, "no Dagster instance: DAGSTER_HOME is not set and alerts.dagster_home names none"
    home = home.expanduser()
    if not home.is_dir():
        # Opening it would create an empty instance there: say so instead.
        return None, f"no Dagster instance at {home} (not a directory)"
    return home, None


def open_instance(home: Path):
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(home))


def last_successes(instance, jobs: list[str]) -> dict[str, datetime | None]:
    """job -> end of its newest successful run (None: it never succeeded in this instance)."""
    from dagster import DagsterRunStatus, RunsFilter

    found: dict[str, datetime | None] = {}
    for job in jobs:
        records = instance.get_run_records(
            RunsFilter(job_name=job, statuses=[DagsterRunStatus.SUCCESS]), limit=5, order_by="end_time"
        )
        ends = [r.end_time for r in records if r.end_time is not None]
        found[job] = _utc(max(ends)) if ends else None
    return found


def daemon_heartbeats(instance) -> dict[str, datetime | None]:
    """Watched daemon type -> its newest heartbeat (None: never). Only the types this instance requires."""
    beats = instance.get_daemon_heartbeats()
    required = set(instance.get_required_daemon_types())
    return {
        kind: _utc(beats[kind].timestamp) if kind in beats else None for kind in WATCHED_DAEMONS if kind in required
    }


def last_sensor_tick(instance, sensor_name: str) -> datetime | None:
    """When the named sensor last ticked (any location), or None when it never did."""
    from dagster._core.definitions.run_request import InstigatorType

    if instance.schedule_storage is None:  # an ephemeral instance keeps no ticks
        return None
    newest: datetime | None = None
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name != sensor_name:
            continue
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
        if ticks:
            ts = _utc(ticks[0].timestamp)
            newest = ts if newest is None or (ts is not None and ts > newest) else newest
    return newest
