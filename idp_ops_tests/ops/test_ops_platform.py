"""The ops platform in containers (compose/ops): deploy_job launched on its webserver runs in its own container.

What this proves that test_e2e_dagster.py (host processes, SQLite) cannot: up.sh brings Postgres, the
code-location gRPC server, the webserver and the daemon up healthy; the location loads with every job;
the daemon's DockerRunLauncher starts the run as a new container with this box's container context
(host network, Postgres on loopback, the password file, the key files, the Docker socket as the service
uid) and that container deploys the CPU stack, which then answers with its key and refuses without one.
"""

from __future__ import annotations

import re
import time

import pytest

from idp_ops.definitions import defs
from idp_ops.settings import load_settings
from idp_ops.stack.deploy import compose_project
from idp_ops.stack.probe import probe_endpoint
from idp_ops.stack.secrets import read_key
from idp_ops_harness.ops_platform import UP_TIMEOUT_S, OpsPlatform, compose_working_dirs, torn_down_after
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

# A fresh clone builds the idp-ops and Postgres images first (up.sh runs their build scripts): minutes, once.
pytestmark = [pytest.mark.docker, pytest.mark.e2e, pytest.mark.model, pytest.mark.timeout(UP_TIMEOUT_S + 600)]

LOCATION = "idp_ops"
LAUNCHED = re.compile(r"\[DockerRunLauncher\] Launching run in a new container ([0-9a-f]{64}) with image (\S+)")
IN_CONTAINER_COMPOSE_DIR = "/opt/idp-ops/app/compose"  # the project inside the idp-ops image


def test_deploy_job_runs_in_its_own_container(tmp_path, llama_image, demo_models_dir):
    config_file = write_settings(
        tmp_path / "idp-ops.yaml",
        **cpu_stack_settings(tmp_path / "home", demo_models_dir, llama_image, project="idp-ops-platform-stack"),
    )
    settings = load_settings(config_file)
    platform = OpsPlatform(tmp_path, config_file)
    started = time.monotonic()
    with torn_down_after(platform, settings):
        up_s = platform.up()
        print(f"\nplatform {platform.project} healthy after {up_s:.1f} s")
        location = platform.wait_for_location(LOCATION)
        (repository,) = location["repositories"]
        jobs = {j["name"] for j in repository["jobs"]}
        # Every job the definitions hold in-process, no more, no fewer (the image is built from this tree).
        expected = set(defs.get_repository_def().job_names)
        assert jobs == expected, (
            f"platform location: missing {sorted(expected - jobs)}, extra {sorted(jobs - expected)}"
        )

        run_id = platform.launch(LOCATION, repository["name"], "deploy_job")
        status = platform.wait_for_run(run_id)
        events = platform.events(run_id)
        assert status == "SUCCESS", f"deploy_job run {run_id} ended {status}:\n{platform.errors(run_id)}"
        print(f"deploy_job {run_id} {status} after {time.monotonic() - started:.1f} s in all")

        # Its own container: the launcher's engine event names it, docker lists it with the run's label,
        # it ran the platform's image and exited 0, and it is none of the platform's services.
        launched = [m for e in events if (m := LAUNCHED.search(e.get("message") or ""))]
        assert len(launched) == 1, f"expected one DockerRunLauncher launch event, got {len(launched)}"
        container_id, image = launched[0].groups()
        containers = {c["ID"]: c for c in platform.run_containers()}
        assert container_id in containers, f"run container {container_id[:12]} not in docker ps -a: {list(containers)}"
        container = containers[container_id]
        assert f"dagster/run_id={run_id}" in container["Labels"], container["Labels"]
        assert container["Image"] == image and image.startswith("idp-ops/ops:"), container
        # SUCCESS is stored just before the run worker exits: wait for the container to end, then its status.
        assert platform.wait_container(container_id) == 0, f"run container {container_id[:12]} exited non-zero"
        assert "com.docker.compose.service" not in container["Labels"], "the run ran in a platform service"
        tags = {t["key"]: t["value"] for t in platform.run(run_id)["tags"]}
        assert tags.get("docker/container_id") == container_id, tags

        # Launch overhead: from the run's enqueue to its first step, in the new container.
        stamps = {e["__typename"]: int(e["timestamp"]) for e in reversed(events) if e.get("timestamp")}
        overhead_s = (stamps["ExecutionStepStartEvent"] - stamps["RunEnqueuedEvent"]) / 1000
        print(f"run launch overhead (enqueued -> first STEP_START): {overhead_s:.1f} s")

        # The stack that container deployed: compose ran inside it (the project's working dir is the
        # image's path, not this checkout's), and every endpoint answers from the host.
        states = compose_project(settings).ps()
        assert {s.service for s in states if s.running} >= {"openai-standin", "llamacpp-cpu"}, states
        working_dirs = compose_working_dirs(settings.compose_project)
        assert working_dirs == {IN_CONTAINER_COMPOSE_DIR}, f"stack containers made from {working_dirs}"
        for endpoint in settings.endpoints:
            key = read_key(settings.secrets_dir / endpoint.key_name)
            result = probe_endpoint(endpoint.name, endpoint.url, endpoint.protocol, endpoint.model, key)
            assert result.ok, f"{endpoint.name} after the containerised deploy: {result.problems}"
