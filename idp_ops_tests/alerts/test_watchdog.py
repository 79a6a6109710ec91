"""Dead-man checks against real Dagster instances: deadman_sensor inside, the guard's DagsterWatch outside.

The instance is a real SQLite instance in a tmp DAGSTER_HOME; heartbeats are written
through the instance's own API with the time a daemon would have stamped them.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from dagster import DagsterInstance, SkipReason, build_sensor_context, job, op
from dagster._daemon.types import DaemonHeartbeat

from idp_ops.alerts.deadman import Spells
from idp_ops.alerts.defs import deadman_sensor
from idp_ops.alerts.watchdog import DagsterWatch
from idp_ops.resources import SettingsResource
from idp_ops.thermal.watch import run_guard
from idp_ops_harness.cli import idp_ops
from idp_ops_harness.recorded_data import FIXTURES
from idp_ops_harness.webhook_recorder import read_alerts

DAEMONS = ("SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR")


@op
def ok() -> None:
    pass


@job
def tiny_ok_job():
    ok()


def instance_at(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    return home, DagsterInstance.from_config(str(home))


def beat(instance, at: datetime) -> None:
    for kind in DAEMONS:
        instance.add_daemon_heartbeat(DaemonHeartbeat(at.timestamp(), kind, None, None))


def deadman_tick(config, instance, cursor):
    context = build_sensor_context(
        instance=instance, cursor=cursor, resources={"settings": SettingsResource(config_file=str(config))}
    )
    result = deadman_sensor(context)
    assert isinstance(result, SkipReason)
    return result, context.cursor


def test_deadman_sensor_alerts_an_overdue_job_once_and_its_recovery_once(tmp_path, alert_settings):
    config, settings = alert_settings(alerts={"deadman": [{"job": "tiny_ok_job", "window_h": 24, "grace_h": 1}]})
    _, instance = instance_at(tmp_path)
    with instance:
        # Watching for two days and the job never succeeded: overdue.
        cursor = Spells(watching_since=(datetime.now(UTC) - timedelta(days=2)).isoformat()).to_json()
        first, cursor = deadman_tick(config, instance, cursor)
        assert "overdue: tiny_ok_job" in first.skip_message
        again, cursor = deadman_tick(config, instance, cursor)
        assert "0 alerts posted" in again.skip_message
        assert tiny_ok_job.execute_in_process(instance=instance).success
        recovered, cursor = deadman_tick(config, instance, cursor)
        assert "no job overdue" in recovered.skip_message
    alerts = read_alerts(settings.alerts_log)
    assert [(a["action"], a["key"]) for a in alerts] == [
        ("overdue", "overdue:tiny_ok_job:never"),
        ("recovered", "overdue:tiny_ok_job:never:recovered"),
    ]
    assert alerts[0]["job"] == "tiny_ok_job" and alerts[0]["window_h"] == 24 and alerts[0]["age_h"] >= 48
    assert alerts[1]["last_success"] is not None and all(a["origin"] == "deadman_sensor" for a in alerts)


def test_the_guard_alerts_a_daemon_whose_heartbeats_stopped_once_and_its_return_once(tmp_path, alert_settings):
    home, instance = instance_at(tmp_path)
    config, settings = alert_settings(alerts={"dagster_home": str(home), "daemon_stale_after_s": 60})
    lines: list[str] = []
    with instance:
        beat(instance, datetime.now(UTC) - timedelta(seconds=10))
        watch = DagsterWatch(lambda: settings, log=lines.append)
        assert watch.check() == []
        beat(instance, datetime.now(UTC) - timedelta(seconds=200))  # the daemon died 200 s ago
        (down,) = watch.check()
        assert down.fields["action"] == "scheduler_down" and down.key.startswith("scheduler_down:")
        assert watch.check() == [], "one alert per spell, not one per check"

        restarted = DagsterWatch(lambda: settings, log=lines.append)  # a guard restarted mid-spell
        (same,) = restarted.check()
        assert same.key == down.key and any("(already alerted)" in line for line in lines)

        beat(instance, datetime.now(UTC))
        (up,) = watch.check()
        assert up.fields["action"] == "scheduler_up" and up.key == down.key + ":scheduler_up"
        watch.close()
        restarted.close()
    alerts = read_alerts(settings.alerts_log)
    assert [a["action"] for a in alerts] == ["scheduler_down", "scheduler_up"]
    assert alerts[0]["origin"] == "guard" and alerts[0]["age_s"] >= 60 and alerts[0]["stale_after_s"] == 60
    assert set(alerts[0]["heartbeats"]) == set(DAEMONS)


def test_the_sensor_and_the_guard_post_one_spell_once(tmp_path, alert_settings):
    home, instance = instance_at(tmp_path)
    config, settings = alert_settings(
        alerts={"dagster_home": str(home), "deadman": [{"job": "tiny_ok_job", "window_h": 1, "grace_h": 0}]}
    )
    since = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    with instance:
        beat(instance, datetime.now(UTC))
        deadman_tick(config, instance, Spells(watching_since=since).to_json())
        watch = DagsterWatch(lambda: settings, log=lambda line: None)
        watch.spells.watching_since = since
        (seen,) = watch.check()
        watch.close()
    assert seen.key == "overdue:tiny_ok_job:never"
    assert [(a["action"], a["origin"]) for a in read_alerts(settings.alerts_log)] == [("overdue", "deadman_sensor")]


def guard(settings, **kwargs):
    contained, lines = [], []
    run_guard(
        settings,
        contain=lambda request: contained.append(request.episode),
        stop=threading.Event(),
        log=lines.append,
        interval_s=0.01,
        max_ticks=40,
        dagster_check_s=0.01,
        **kwargs,
    )
    return contained, lines


def hot_trace_settings(alert_settings, **alerts):
    thermal = {
        "warn_c": 50,
        "contain_c": 55,
        "replay_csv": str(FIXTURES / "h200_trace.csv"),
        "replay_rows_per_tick": 10,
    }
    return alert_settings(thermal=thermal, alerts=alerts)[1]


def test_without_an_instance_the_guard_says_so_once_and_guards_as_before(tmp_path, alert_settings, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = hot_trace_settings(alert_settings)
    baseline, _ = guard(settings, watch_dagster=False)
    contained, lines = guard(settings)
    # Episode ids carry a random epoch: the same containments are the same devices, in the same number.
    assert contained and [e.split("-")[0] for e in contained] == [e.split("-")[0] for e in baseline]
    notes = [line for line in lines if "no Dagster instance" in line]
    assert len(notes) == 1 and "DAGSTER_HOME is not set" in notes[0]
    assert "scheduler_down" not in {a["action"] for a in read_alerts(settings.alerts_log)}


def test_an_unreadable_instance_never_stops_the_guards_containment(tmp_path, alert_settings):
    home = tmp_path / "broken_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("run_storage: [this is not an instance config\n")
    settings = hot_trace_settings(alert_settings, dagster_home=str(home))
    contained, lines = guard(settings)
    assert contained, "the thermal work went on"
    failures = [line for line in lines if line.startswith("Dagster check failed")]
    assert len(failures) == 1, lines  # said once, not once per check


def test_the_guard_command_alerts_a_dead_daemon_unless_told_not_to_watch_dagster(tmp_path, alert_settings):
    home, instance = instance_at(tmp_path)
    with instance:
        beat(instance, datetime.now(UTC) - timedelta(hours=1))  # a daemon that died an hour ago
    config, settings = alert_settings()
    # The guard finds the instance as an operator's shell gives it.
    env = {"DAGSTER_HOME": str(home), "IDP_CONFIG": str(config)}

    quiet = idp_ops("thermal-guard", "--interval", "0.5", "--max-ticks", "6", "--no-dagster", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert read_alerts(settings.alerts_log) == []

    run = idp_ops("thermal-guard", "--interval", "0.5", "--max-ticks", "6", env=env)
    assert run.returncode == 0, run.stderr
    assert "scheduler_down: dagster-daemon is not running" in run.stderr
    (down,) = read_alerts(settings.alerts_log)
    assert down["action"] == "scheduler_down" and down["origin"] == "guard" and down["age_s"] >= 3600
