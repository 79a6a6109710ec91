"""The platform's thermal guard, alone: the first line of defence contains with nothing else of the platform up.

`up.sh guard` with IDP_OPS_GUARD=on starts only the guard container (no Postgres, no daemon, no code
location): it replays the real H200 trace, stops the GPU-role service of the stack through the Docker
socket, and latches in the box's data dir, where the host reads it. Its Dagster watch finds no instance
to read (Postgres is not up), which must never stop containment.
"""

from __future__ import annotations

import json

import pytest

from idp_ops.settings import load_settings
from idp_ops.stack.deploy import compose_project, read_latch
from idp_ops_harness.ops_platform import UP_TIMEOUT_S, OpsPlatform, torn_down_after
from idp_ops_harness.thermal_e2e import deploy_fresh, replay_settings, wait_until_contained

pytestmark = [pytest.mark.docker, pytest.mark.e2e, pytest.mark.model, pytest.mark.timeout(UP_TIMEOUT_S + 300)]


def test_the_guard_container_contains_alone(tmp_path, llama_image, demo_models_dir):
    config_file = replay_settings(
        tmp_path, demo_models_dir, llama_image, "idp-ops-guard-stack", rows_per_tick=5, trace_in_data_dir=True
    )
    settings = load_settings(config_file)
    platform = OpsPlatform(tmp_path, config_file, name="idp-ops-platform-guard")
    with torn_down_after(platform, settings):
        deploy_fresh(settings)
        platform.up("guard", IDP_OPS_GUARD="on")
        running = set(platform.compose("ps", "--services", "--status", "running").stdout.split())
        assert running == {"guard"}, f"only the guard should run: {running}"

        timing = wait_until_contained(settings, timeout_s=120)
        print(f"\nguard container: detection -> GPU service stopped {timing.latency_s:.2f} s")
        assert timing.contain_alert["origin"] == "guard", timing.contain_alert
        latch = read_latch(settings)
        assert latch and latch["reading"]["episode"] == timing.contain_alert["episode"], latch
        running_services = {s.service for s in compose_project(settings).ps() if s.running}
        assert running_services == {"llamacpp-cpu"}, running_services

        # Still alive and healthy after containing, with no instance to watch.
        state = platform.inspect("guard")["State"]
        assert state["Running"] and state["Health"]["Status"] in {"healthy", "starting"}, state
        alerts = [json.loads(line) for line in settings.alerts_log.read_text().splitlines()]
        assert [a["action"] for a in alerts if a["action"] == "contain"] == ["contain"], alerts
