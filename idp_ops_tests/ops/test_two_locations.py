"""Two code locations, two Docker engines: a deploy in location B starts containers only on engine B.

Box B is a real second dockerd in its own network namespace, joined to the host by a veth pair (a box on a
LAN) and reached by the central daemon over tcp + TLS. Its code location is compose/ops/code-location.yml on
engine B (env file from `platform_env.py --location`); the central platform is compose/ops up through up.sh,
its workspace naming both locations and its Postgres published on the host's side of the link. deploy_job,
launched over GraphQL in location B, runs in a container the platform's launcher starts on engine B, and
that container deploys B's stack on engine B: nothing of it, run or stack, exists on the host engine, and
the stack's endpoints stay on B's loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import pytest

from idp_ops.definitions import defs
from idp_ops.settings import load_settings
from idp_ops.stack.deploy import compose_project
from idp_ops.stack.secrets import POSTGRES_PASSWORD_FILE_NAME, ensure_postgres_password
from idp_ops_harness.graphql_queries import ENGINE_EVENTS_QUERY, RELOAD_MUTATION
from idp_ops_harness.ops_locations import (
    BoxLocation,
    box_engine,
    make_engine_tls,
    ops_image,
    tcp_engine_url,
    write_workspace,
)
from idp_ops_harness.ops_platform import PROJECT_LABEL, UP_TIMEOUT_S, OpsPlatform
from idp_ops_harness.ports import free_port
from idp_ops_harness.projects import unique_project
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

pytestmark = [pytest.mark.docker, pytest.mark.e2e, pytest.mark.model, pytest.mark.timeout(UP_TIMEOUT_S + 900)]

ENGINE_NAME = "idp-2loc-b"
LINK = "10.213.42.0/30"
HOST_ENGINE = "unix:///var/run/docker.sock"
LOCATION_A, LOCATION_B = "idp_ops", "idp_ops_box_b"


def _containers(host: str, label: str) -> dict[str, dict]:
    listed = subprocess.run(
        ["docker", "-H", host, "ps", "-a", "--no-trunc", "--format", "{{json .}}", "--filter", f"label={label}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return {c["ID"]: c for c in (json.loads(line) for line in listed.stdout.splitlines() if line.strip())}


def _exit_code(host: str, container_id: str) -> int:
    waited = subprocess.run(
        ["docker", "-H", host, "wait", container_id], capture_output=True, text=True, timeout=120, check=True
    )
    return int(waited.stdout.strip())


def test_a_deploy_in_location_b_starts_containers_only_on_engine_b(tmp_path, llama_image, demo_models_dir):
    config_a = write_settings(
        tmp_path / "idp-ops-a.yaml",
        **cpu_stack_settings(tmp_path / "a", demo_models_dir, llama_image, project="idp-2loc-a-stack"),
    )
    config_b = write_settings(
        tmp_path / "idp-ops-b.yaml",
        **cpu_stack_settings(tmp_path / "b", demo_models_dir, llama_image, project="idp-2loc-b-stack"),
    )
    settings_a, settings_b = load_settings(config_a), load_settings(config_b)
    tls = make_engine_tls(tmp_path / "tls", LINK.replace("0/30", "2"))
    engine = box_engine(ENGINE_NAME, LINK, tls)
    platform = OpsPlatform(tmp_path, config_a)
    box_b = BoxLocation(engine, config_b, LOCATION_B, unique_project("idp-2loc-b"), tmp_path / "location-b.env")
    grpc_port = free_port()
    timings: dict[str, float] = {}
    started = time.monotonic()

    def lap(name: str, since: float) -> float:
        timings[name] = time.monotonic() - since
        return time.monotonic()

    try:
        t = time.monotonic()
        engine.start()
        t = lap("engine B start", t)
        image = ops_image()
        t = lap("idp-ops image (build.sh)", t)
        engine.load_image(llama_image)
        engine.load_image(image)
        t = lap("images into engine B", t)

        # What the central daemon and webserver read, from the platform dir (mounted read-only in them, in no
        # run container): the workspace naming both locations (up.sh picks it up), engine B's TLS client files.
        platform_dir = settings_a.home / "ops-platform"
        shutil.copytree(tls.client_dir, platform_dir / "engines" / ENGINE_NAME)
        certs = f"/etc/idp-ops/platform/engines/{ENGINE_NAME}"  # where the daemon's launcher reads them
        write_workspace(
            platform_dir / "workspace.yaml",
            [("code-location", 4000, LOCATION_A), (engine.inner_address, grpc_port, LOCATION_B)],
        )
        platform.env.update(IDP_OPS_PG_BIND=engine.host_address)
        # The central password first (up.sh keeps an existing one): box B gets its copy before it starts.
        ensure_postgres_password(
            settings_a.secrets_dir, owner_uid=settings_a.service_uid, owner_gid=settings_a.service_gid
        )
        box_b.provision(settings_a.secrets_dir / POSTGRES_PASSWORD_FILE_NAME)
        env_b = box_b.write_env(
            image,
            pg_host=engine.host_address,
            pg_port=platform.pg_port,
            grpc_bind=engine.inner_address,
            grpc_port=grpc_port,
            docker_socket=str(engine.socket),
            run_engine=tcp_engine_url(engine),
            run_engine_tls_verify=True,
            run_engine_cert_path=certs,
        )
        password = (settings_a.secrets_dir / POSTGRES_PASSWORD_FILE_NAME).read_text().strip()
        assert password not in json.dumps(env_b) and password not in box_b.env_file.read_text(), "secret in env"
        # The central platform first: B's code server opens the instance (Postgres) when it starts.
        platform.up()
        t = lap("central platform up (up.sh)", t)
        box_b.up()
        t = lap("location B up on engine B", t)
        # The webserver loaded its workspace before B answered: reload B there (the daemon rereads its
        # workspace every 60 s by itself, and launching needs only the run's origin).
        reloaded = platform.gql(RELOAD_MUTATION, {"name": LOCATION_B})["reloadRepositoryLocation"]
        assert reloaded["__typename"] == "WorkspaceLocationEntry", reloaded

        expected_jobs = set(defs.get_repository_def().job_names)
        for name in (LOCATION_A, LOCATION_B):
            (repository,) = platform.wait_for_location(name)["repositories"]
            assert {j["name"] for j in repository["jobs"]} == expected_jobs, name
        t = lap("both locations loaded", t)

        run_id = platform.launch(LOCATION_B, repository["name"], "deploy_job")
        status = platform.wait_for_run(run_id)
        assert status == "SUCCESS", f"deploy_job in {LOCATION_B} ended {status}:\n{platform.errors(run_id)}"
        t = lap("deploy_job in location B", t)

        # The run container: on engine B, with B's project label, exit 0; nothing with that id or label on A.
        tags = {x["key"]: x["value"] for x in platform.run(run_id)["tags"]}
        container_id = tags["docker/container_id"]
        on_b = _containers(engine.host, f"{PROJECT_LABEL}={box_b.project}")
        assert list(on_b) == [container_id], f"run containers of location B on engine B: {list(on_b)}"
        assert f"dagster/run_id={run_id}" in on_b[container_id]["Labels"]
        assert _exit_code(engine.host, container_id) == 0
        assert not _containers(HOST_ENGINE, f"{PROJECT_LABEL}={box_b.project}"), "B's run container on engine A"
        assert not _containers(HOST_ENGINE, f"dagster/run_id={run_id}"), "B's run on engine A"
        assert not platform.run_containers(), "a run of the central location was started"
        # The launcher's engine event names engine B as the daemon reached it, and a read-only models mount.
        logs = platform.gql(ENGINE_EVENTS_QUERY, {"runId": run_id})["logsForRun"]["events"]
        launched = [e for e in logs if "Launching run in a new container" in (e.get("message") or "")]
        assert len(launched) == 1 and container_id in launched[0]["message"]
        metadata = {m["label"]: m.get("text") for m in launched[0]["metadataEntries"]}
        assert metadata == {"docker_engine": f"{tcp_engine_url(engine)} (settings)", "models_mount": "ro"}

        # The stack it deployed: B's project on engine B only; its endpoints on B's loopback, not the host's.
        stack = f"com.docker.compose.project={settings_b.compose_project}"
        services = {c["Labels"].split("com.docker.compose.service=")[1].split(",")[0]: c["State"]
                    for c in _containers(engine.host, stack).values()}  # fmt: skip
        assert services == {"openai-standin": "running", "llamacpp-cpu": "running"}, services
        assert not _containers(HOST_ENGINE, stack), "B's stack on engine A"
        for endpoint in settings_b.endpoints:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{endpoint.url}/health", timeout=5)
        print("\n" + "\n".join(f"{name:32s} {seconds:7.1f} s" for name, seconds in timings.items()))
    except BaseException:
        print(platform.logs())
        print(box_b.logs())
        raise
    finally:
        try:
            try:
                if engine.answering():
                    compose_project(load_settings(config_b, docker_host=engine.host)).down(timeout=2)
                    box_b.down()
                    assert not _containers(engine.host, f"{PROJECT_LABEL}={box_b.project}")
            finally:
                platform.down()
                assert not platform.run_containers(), "run containers left behind"
                assert not platform.volumes(), f"volumes left behind: {platform.volumes()}"
        finally:
            engine.destroy()
            print(f"torn down; {time.monotonic() - started:.1f} s in all")
