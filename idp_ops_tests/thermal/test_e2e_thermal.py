"""With dagster-daemon running, a replayed overheat stops the GPU-role container on its own."""

import time

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from idp_ops.settings import load_settings
from idp_ops.stack.deploy import compose_project, read_latch
from idp_ops_harness.thermal_e2e import contain_through_daemon, deploy_fresh, replay_settings

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.model]


def test_daemon_sensor_contains_a_replayed_overheat_and_deploy_rearms(tmp_path, llama_image, demo_models_dir):
    config = replay_settings(tmp_path, demo_models_dir, llama_image, "idp-ops-e2e-thermal", rows_per_tick=10)
    settings = load_settings(config)
    dagster = None
    try:
        deploy_fresh(settings)
        # How fast the container stops is measured by benchmarks/thermal_containment_latency.py; this test
        # asserts only who stopped it (contain_through_daemon's 240 s is a hang guard, not a target).
        timing, dagster = contain_through_daemon(tmp_path, config)

        # The containment run is in the instance, launched by the sensor, tagged with the episode.
        deadline = time.monotonic() + 120  # a hang guard
        with DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
            while True:
                runs = instance.get_runs(RunsFilter(job_name="containment_job"))
                if runs and runs[0].status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
                    break
                assert time.monotonic() < deadline, f"containment run not finished: {[r.status for r in runs]}"
                time.sleep(1)
            assert len(runs) == 1 and runs[0].status == DagsterRunStatus.SUCCESS
            assert runs[0].tags["idp_ops/episode"] == timing.contain_alert["episode"]
            assert runs[0].tags.get("dagster/sensor_name") == "thermal_sensor"
        latch = read_latch(settings)
        assert latch["reading"]["temperature_c"] >= 55
        assert latch["reading"]["episode"] == timing.contain_alert["episode"], "latched by that run, that episode"
        dagster.stop()
        dagster = None

        deploy_fresh(settings)  # re-arms
        assert read_latch(settings) is None
        assert {s.service for s in compose_project(settings).ps() if s.running} == {"openai-standin", "llamacpp-cpu"}
    finally:
        if dagster is not None:
            dagster.stop()
        compose_project(settings).down()
