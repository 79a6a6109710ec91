"""One replayed overheat through the real daemon or the real guard, timed (used by a test and a benchmark)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from idp_ops.settings import REPO_ROOT, Settings, load_settings
from idp_ops.stack.compose import container_time
from idp_ops.stack.deploy import compose_project, deploy, read_latch
from idp_ops.stack.secrets import ensure_keys
from idp_ops_harness.dagster_processes import Dagster
from idp_ops_harness.recorded_data import FIXTURES
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

FIXTURE_TRACE = FIXTURES / "h200_trace.csv"


@dataclass
class ContainmentTiming:
    detected_at: datetime  # timestamp of the sample that crossed the contain line (K-th in a row)
    stopped_at: datetime  # dockerd's FinishedAt of the GPU-role container
    latency_s: float
    contain_alert: dict


def replay_settings(
    tmp_path: Path, models_dir: Path, image: str, project: str, *, rows_per_tick: int, trace_in_data_dir: bool = False
) -> Path:
    """The CPU stack plus a thermal replay of the real H200 trace (contain line 55 °C, its peak is 59 °C).

    trace_in_data_dir: replay a copy in the box's data dir, which the ops platform's containers mount at
    the same path (the repo's fixtures are not in them)."""
    home = tmp_path / "home"
    values = cpu_stack_settings(home, models_dir, image, project)
    trace = FIXTURE_TRACE
    if trace_in_data_dir:
        trace = home / "data" / "replay" / FIXTURE_TRACE.name
        trace.parent.mkdir(parents=True)
        shutil.copy(FIXTURE_TRACE, trace)
    values["thermal"] = {
        "warn_c": 50,
        "contain_c": 55,
        "sensor_interval_s": 5,
        "replay_csv": str(trace),
        "replay_rows_per_tick": rows_per_tick,
    }
    return write_settings(tmp_path / "idp-ops.yaml", **values)


def deploy_fresh(settings: Settings) -> None:
    ensure_keys(
        settings.secrets_dir, settings.key_names, owner_uid=settings.service_uid, owner_gid=settings.service_gid
    )
    deploy(settings)


def wait_until_contained(settings: Settings, timeout_s: float, alive=lambda: None) -> ContainmentTiming:
    project = compose_project(settings)
    service = settings.gpu_services[0]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive()
        states = {s.service: s for s in project.ps()}
        if service in states and not states[service].running:
            # The guard logs its alert after the stop it verified: give the alert a moment to land.
            contain = _first_contain_alert(settings, timeout_s=30)
            detected = datetime.fromisoformat(contain["timestamp"])
            stopped = container_time(states[service].container, "FinishedAt", engine=project.engine)
            return ContainmentTiming(detected, stopped, (stopped - detected).total_seconds(), contain)
        time.sleep(0.5)
    raise AssertionError(f"{service} still running after {timeout_s:.0f} s")


def _first_contain_alert(settings: Settings, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        if settings.alerts_log.exists():
            alerts = [json.loads(line) for line in settings.alerts_log.read_text().splitlines() if line.strip()]
            contain = next((a for a in alerts if a["action"] == "contain"), None)
            if contain is not None:
                return contain
        if time.monotonic() > deadline:
            raise AssertionError(f"the GPU service stopped, but no contain alert in {settings.alerts_log}")
        time.sleep(0.2)


def contain_through_daemon(tmp_path: Path, config: Path, timeout_s: float = 240) -> tuple[ContainmentTiming, Dagster]:
    """Start only dagster-daemon on a fresh instance; its thermal_sensor must stop the GPU-role container."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    dagster = Dagster(tmp_path, dagster_home, config)
    dagster.start(webserver=False, daemon=True)
    try:
        return wait_until_contained(load_settings(config), timeout_s, dagster.check_alive), dagster
    except BaseException:
        print(dagster.tails())
        dagster.stop()
        raise


def contain_through_guard(config: Path, interval_s: float, timeout_s: float = 120) -> ContainmentTiming:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env["IDP_CONFIG"] = str(config)
    guard = subprocess.Popen(
        [sys.executable, "-m", "idp_ops.cli", "thermal-guard", "--interval", str(interval_s)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        return wait_until_contained(load_settings(config), timeout_s)
    finally:
        guard.terminate()
        guard.wait(timeout=30)


def latch_reason(config: Path) -> str | None:
    latch = read_latch(load_settings(config))
    return latch["reason"] if latch else None
