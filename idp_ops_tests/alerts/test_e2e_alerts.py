"""On a real dagster-daemon: a failed run is alerted by run_failure_alert_sensor; then the daemon is
killed and the thermal guard, outside Dagster, raises "scheduler_down" (and "scheduler_up" once a
new daemon beats again)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime

import pytest
import yaml
from dagster import DagsterInstance

from idp_ops.alerts.instance import last_sensor_tick
from idp_ops.alerts.sink import webhooks
from idp_ops.settings import REPO_ROOT
from idp_ops.thermal.watch import run_guard
from idp_ops_harness.dagster_processes import BIN, Dagster
from idp_ops_harness.webhook_recorder import read_alerts

pytestmark = [pytest.mark.e2e]

STALE_AFTER_S = 60  # each of the daemon's threads beats every 30 s: twice that, on a busy 2-core box
CHECK_EVERY_S = 1.0


def wait_for(predicate, hang_guard_s, what, dagster=None, lines=()):
    deadline = time.monotonic() + hang_guard_s
    while True:
        if dagster is not None:
            dagster.check_alive()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if dagster is not None:
                print(dagster.tails())
            print("\n".join(lines))
            raise AssertionError(f"still waiting after {hang_guard_s:.0f} s for {what}")
        time.sleep(0.5)


def alerts_of(settings, action):
    return [a for a in read_alerts(settings.alerts_log) if a["action"] == action]


def test_a_failed_run_is_alerted_and_a_killed_daemon_is_seen_by_the_guard(tmp_path, alert_settings, webhook):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")  # the shipped queue settings
    # Create the instance's storage before the daemon and `dagster job launch` race to create it.
    DagsterInstance.from_config(str(dagster_home)).dispose()
    config, settings = alert_settings(
        thermal={"webhook_url": webhook.url, "sensor_interval_s": 5},
        alerts={"dagster_home": str(dagster_home), "daemon_stale_after_s": STALE_AFTER_S},
    )
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "idp_ops_harness.alerts_location",
                            "location_name": "idp_ops",
                            "working_directory": str(REPO_ROOT),
                        }
                    }
                ]
            }
        )
    )
    dagster = Dagster(tmp_path, dagster_home, config, workspace=workspace)
    dagster.start(webserver=False, daemon=True)
    stop, lines = threading.Event(), []
    guard = threading.Thread(
        target=run_guard,
        kwargs={
            "settings": settings,
            "contain": lambda request: lines.append(f"UNEXPECTED CONTAIN {request.episode}"),
            "stop": stop,
            "log": lines.append,
            "interval_s": 1.0,
            "dagster_check_s": CHECK_EVERY_S,
        },
        daemon=True,
    )
    try:
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            # A run-status sensor starts from the newest event at its first tick: let it tick first.
            wait_for(lambda: last_sensor_tick(instance, "run_failure_alert_sensor"), 240, "a first tick", dagster)
            launch = subprocess.run(
                [str(BIN / "dagster"), "job", "launch", "-w", str(workspace), "-j", "failing_job"],
                cwd=REPO_ROOT,
                env=dagster.env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert launch.returncode == 0, f"dagster job launch failed:\n{launch.stderr[-3000:]}"
            (failed,) = wait_for(lambda: alerts_of(settings, "run_failed"), 240, "the run_failed alert", dagster)
            assert failed["job"] == "failing_job" and failed["step_key"] == "fail_on_purpose"
            assert failed["error"] == "RuntimeError: made to fail by the alerts end-to-end test"
            assert failed["origin"] == "run_failure_alert_sensor"

            # The sensor posts from the daemon's code server, in the background of that process (flushing
            # this process's queue cannot wait for it): wait until the webhook has it, then exactly once.
            def posted():
                return [p["key"] for p in webhook.received if p["action"] == "run_failed"]

            assert wait_for(posted, 60, "the run_failed webhook post", dagster) == [failed["key"]]

            guard.start()
            wait_for(lambda: any("watching the Dagster instance" in line for line in lines), 60, "the guard", dagster)
            assert not alerts_of(settings, "scheduler_down"), "a beating daemon is not down"

            killed_at = datetime.now(UTC)
            daemon = dagster.procs.pop("daemon")
            os.killpg(daemon.pid, signal.SIGKILL)  # a crash: no goodbye (its code server goes too)
            daemon.wait(timeout=30)
            (down,) = wait_for(
                lambda: alerts_of(settings, "scheduler_down"), STALE_AFTER_S + 30 + 60, "scheduler_down", lines=lines
            )
            detected_s = (datetime.fromisoformat(down["logged_at"]) - killed_at).total_seconds()
            ages = {
                k: round((killed_at - datetime.fromisoformat(v)).total_seconds(), 1)
                for k, v in down["heartbeats"].items()
            }
            print(f"\ndead daemon detected by the guard {detected_s:.1f} s after the kill (limit {STALE_AFTER_S} s);")
            print(f"heartbeat ages at the kill: {ages}")
            assert down["origin"] == "guard" and datetime.fromisoformat(down["last_heartbeat"]) <= killed_at
            assert down["age_s"] >= STALE_AFTER_S

            dagster.start(webserver=False, daemon=True)  # a new daemon
            (up,) = wait_for(lambda: alerts_of(settings, "scheduler_up"), 240, "scheduler_up", dagster, lines)
            assert up["key"] == down["key"] + ":scheduler_up"
            assert not [line for line in lines if "UNEXPECTED" in line or "tick failed" in line], lines
    finally:
        stop.set()
        if guard.is_alive():
            guard.join(timeout=30)
        dagster.stop()
    assert webhooks.flush(30)
    assert {p["action"] for p in webhook.received} >= {"run_failed", "scheduler_down", "scheduler_up"}
