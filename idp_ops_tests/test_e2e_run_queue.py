"""On a real dagster-daemon: containment never waits in the run queue behind heavy runs."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from idp_ops.settings import REPO_ROOT
from idp_ops.stack.deploy import compose_project, read_latch
from idp_ops.thermal.telemetry import Sample, write_samples_csv
from idp_ops_harness.dagster_processes import BIN, Dagster
from idp_ops_harness.gpu_standin import running, standin_settings

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

IN_PROGRESS = (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED)


def trace(temps: list[float], start: datetime) -> list[Sample]:
    return [
        Sample(ts=start + timedelta(seconds=i), device="gpu0", source="csv", temperature_c=t)
        for i, t in enumerate(temps)
    ]


def runs_of(instance, job_name):
    return instance.get_runs(RunsFilter(job_name=job_name))


def wait_for(predicate, hang_guard_s, what, dagster):
    deadline = time.monotonic() + hang_guard_s
    while True:
        dagster.check_alive()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            print(dagster.tails())
            raise AssertionError(f"still waiting after {hang_guard_s:.0f} s for {what}")
        time.sleep(0.5)


def test_containment_starts_at_once_while_heavy_runs_fill_their_slots(tmp_path, llama_image):
    replay = tmp_path / "trace.csv"
    t0 = datetime.now(UTC)
    write_samples_csv(trace([40, 41], t0), replay)
    settings = standin_settings(
        tmp_path,
        llama_image,
        thermal={
            "warn_c": 85,
            "contain_c": 90,
            "sensor_interval_s": 5,
            "replay_csv": str(replay),
            "replay_rows_per_tick": 2,
        },
    )
    config = tmp_path / "idp-ops.yaml"
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "idp_ops_harness.queue_location",
                            "location_name": "idp_ops",
                            "working_directory": str(REPO_ROOT),
                        }
                    }
                ]
            }
        )
    )
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")  # the shipped queue settings
    # Create the instance's storage before two processes (the daemon and `dagster job
    # launch`) race to create and migrate the same fresh SQLite files.
    DagsterInstance.from_config(str(dagster_home)).dispose()
    release = tmp_path / "release"
    project = compose_project(settings)
    project.up(wait=False, timeout=60)
    dagster = Dagster(tmp_path, dagster_home, config, workspace=workspace)
    dagster.env["IDP_TEST_RELEASE_FILE"] = str(release)
    dagster.start(webserver=False, daemon=True)
    try:
        for _ in range(3):  # three heavy runs: two take the heavy slots, the third must wait
            launch = subprocess.run(
                [str(BIN / "dagster"), "job", "launch", "-w", str(workspace), "-j", "long_heavy_job"],
                cwd=REPO_ROOT,
                env=dagster.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert launch.returncode == 0, f"dagster job launch failed:\n{launch.stderr[-3000:]}"
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            wait_for(
                lambda: sum(r.status in IN_PROGRESS for r in runs_of(instance, "long_heavy_job")) == 2,
                120,
                "two heavy runs in progress",
                dagster,
            )

            # The card overheats while both heavy slots are taken.
            write_samples_csv(trace([40, 41, 95, 96], t0), replay)
            contained = wait_for(
                lambda: [r for r in runs_of(instance, "containment_job") if r.status == DagsterRunStatus.SUCCESS],
                120,
                "a successful containment run",
                dagster,
            )
            heavy = runs_of(instance, "long_heavy_job")
            assert sorted(r.status.value for r in heavy) == ["QUEUED", "STARTED", "STARTED"], (
                "the heavy runs still hold their slots, and the tag limit still holds the third"
            )
            record = instance.get_run_record_by_id(contained[0].run_id)
            waited = record.start_time - record.create_timestamp.timestamp()
            print(f"\ncontainment run: queued -> started in {waited:.1f} s with both heavy slots taken")
            assert contained[0].tags["dagster/priority"] == "100"
        assert running(settings) == set() and read_latch(settings)["reading"]["episode"]
    finally:
        release.touch()
        dagster.stop()
        project.down(timeout=2)
