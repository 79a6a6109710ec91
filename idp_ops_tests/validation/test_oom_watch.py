"""The no-OOM watch around the load test, against real containers that really run out of memory.

* a llama-server whose memory limit is below what the model needs (``--load-mode none``
  reads the 250 MB GGUF into anonymous memory under a 160 MB cgroup limit): the kernel
  kills it, docker restarts it, again and again;
* a healthy llama-server beside it, which must pass;
* a container that survives while the kernel kills a worker process inside it (vLLM's
  engine-core case): only the cgroup's oom_kill counter and docker's 'oom' event see it;
* docker unreachable: not judged, never passed;
* end to end: the load_test_results asset materialized by Dagster, its no_oom check.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from dagster import DagsterInstance, materialize

from idp_ops.history import database as history
from idp_ops.resources import SettingsResource
from idp_ops.settings import load_settings
from idp_ops.stack.compose import ComposeProject
from idp_ops.validation.defs import load_test_results
from idp_ops.validation.oom_watch import OOM_LOG_PATTERN, OomWatch, parse_oom_kill
from idp_ops_harness.ports import free_port
from idp_ops_harness.projects import unique_project
from idp_ops_harness.settings_files import write_settings

MODEL = "gemma-3-270m-q4_k_m.gguf"
SERVER = ["--model", f"/models/{MODEL}", "--ctx-size", "2048", "--parallel", "2", "--threads", "1"]
SERVER += ["--host", "0.0.0.0", "--port", "8080", "--no-webui"]


def test_the_kernel_counter_is_read_from_v1_and_v2_files():
    assert parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == 3  # v1 memory.oom_control
    assert parse_oom_kill("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n") == 1  # v2 memory.events
    assert parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n") is None  # kernels before 4.13


def test_the_log_pattern_matches_what_servers_print_on_a_failed_allocation():
    for line in (
        "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 1073741824",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "terminate called after throwing an instance of 'std::bad_alloc'",
        "mmap failed: Cannot allocate memory",
    ):
        assert OOM_LOG_PATTERN.search(line), line
    assert not OOM_LOG_PATTERN.search("srv  update_slots: all slots are idle")


def test_docker_unreachable_is_not_judged_and_never_passes(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with OomWatch("some-project", ["llamacpp-cpu"], interval_s=0.2) as watch:
        time.sleep(0.5)
    result = watch.result
    assert not result.judged and result.status == "not judged"
    assert result.message.startswith("not judged: docker unreachable")
    assert result.status_for("llamacpp-cpu") == "not judged" and not result.findings


def _compose_file(path, models_dir, image, ports):
    lines = ["services:"]
    for service, (memory, extra) in {"starved": ("160m", ["--load-mode", "none"]), "healthy": ("1g", [])}.items():
        lines += [
            f"  {service}:",
            f"    image: {image}",
            "    restart: unless-stopped",
            f'    volumes: ["{models_dir}:/models:ro"]',
            f'    ports: ["127.0.0.1:{ports[service]}:8080"]',
            f"    command: {[*SERVER, *extra]}",
            f"    deploy: {{resources: {{limits: {{memory: {memory}}}}}}}",
        ]
    lines += [
        # Survives its worker's death: the shell is PID 1, the hog a child the test starts.
        "  worker:",
        f"    image: {image}",
        "    entrypoint: [/bin/sh, -c, 'while true; do sleep 1; done']",
        "    deploy: {resources: {limits: {memory: 64m}}}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory, llama_image, demo_models_dir):
    root = tmp_path_factory.mktemp("oom")
    ports = {"starved": free_port(), "healthy": free_port()}
    compose = ComposeProject(
        _compose_file(root / "compose.yml", demo_models_dir, llama_image, ports), unique_project("idp-ops-test-oom")
    )
    try:
        compose.up(["healthy", "worker"], wait=False, timeout=120)
        compose.up(["starved"], wait=False, timeout=120)  # never healthy: it is killed while loading
        yield {"compose": compose, "root": root, "ports": ports, "models_dir": demo_models_dir, "image": llama_image}
    finally:
        compose.down(timeout=5)


def _wait_healthy_server(port: int, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the healthy llama-server on {port} never answered /health")


@pytest.mark.docker
@pytest.mark.model
def test_a_container_starved_of_memory_fails_by_name_and_a_healthy_one_passes(project):
    _wait_healthy_server(project["ports"]["healthy"])
    name = project["compose"].project_name
    with OomWatch(name, ["starved", "healthy"], interval_s=1) as watch:
        time.sleep(8)  # several load/kill/restart cycles of the starved server
    result = watch.result
    assert result.judged and result.status == "failed"
    starved = f"{name}-starved-1"
    assert result.status_for("starved") == "failed"
    kinds = {f.kind for f in result.findings_for("starved")}
    assert {"oom_event", "restarted", "exited"} <= kinds, result.findings
    assert all(f.container == starved for f in result.findings_for("starved"))
    assert starved in result.message_for("starved") and "137" in result.message_for("starved")
    assert result.status_for("healthy") == "passed", result.findings_for("healthy")
    assert result.message_for("healthy") == f"no OOM in {name}-healthy-1 over {result.polls} looks"
    assert result.containers[f"{name}-healthy-1"]["restart_count_after"] == 0


@pytest.mark.docker
def test_a_worker_killed_inside_a_container_that_survives_is_seen_through_the_cgroup(project):
    compose, name = project["compose"], project["compose"].project_name
    container = f"{name}-worker-1"
    with OomWatch(name, ["worker"], interval_s=1) as watch:
        # a child of the container's shell grows past the 64 MB limit; the kernel kills it, the shell stays
        hog = subprocess.run(
            [
                "docker",
                "exec",
                container,
                "sh",
                "-c",
                'x=$(busybox head -c 200000000 /dev/zero | busybox tr "\\000" a)',
            ],
            capture_output=True,
            timeout=120,
        )
        time.sleep(1.5)
    assert hog.returncode == 137, hog.stderr
    result = watch.result
    assert result.containers[container]["status"] == "running"
    assert result.containers[container]["oom_killed"] is False  # the container's own state shows nothing
    kinds = {f.kind for f in result.findings_for("worker")}
    assert "oom_event" in kinds, result.findings
    if not result.notes or "not readable" not in " ".join(result.notes):
        assert "cgroup_oom_kill" in kinds, result.findings
        assert "the kernel killed 1 process(es) in its memory cgroup" in result.message_for("worker")
    assert compose.ps(["worker"])[0].running


def _endpoint(name: str, port: int) -> dict:
    return {
        "name": name,
        "protocol": "llamacpp",
        "url": f"http://127.0.0.1:{port}",
        "compose_service": name,
        "model": "gemma-3-270m",
    }


@pytest.mark.docker
@pytest.mark.model
def test_the_load_test_asset_checks_no_oom_naming_the_starved_container(project):
    _wait_healthy_server(project["ports"]["healthy"])
    root, ports = project["root"], project["ports"]
    base = {
        "profile": "cpu",
        "home": root / "home",
        "models_dir": project["models_dir"],
        "compose_file": project["compose"].compose_file,
        "compose_project": project["compose"].project_name,
        "llama_server_image": project["image"],
        "validation": {
            "load_users": 2,
            "load_spawn_rate": 2,
            "load_run_time_s": 4,
            "load_wait_scale": 0.1,
            "oom_interval_s": 1,
        },
    }
    instance = DagsterInstance.ephemeral()

    def night(name: str, endpoints: list[dict], partition: str):
        config = write_settings(root / f"{name}.yaml", **base, endpoints=endpoints)
        result = materialize(
            [load_test_results],
            partition_key=partition,
            instance=instance,
            resources={"settings": SettingsResource(config_file=str(config))},
            raise_on_error=False,
        )
        return {c.check_name: c for c in result.get_asset_check_evaluations()}, load_settings(config)

    healthy_only, _ = night("green", [_endpoint("healthy", ports["healthy"])], "2026-11-20")
    assert healthy_only["no_oom"].passed, healthy_only["no_oom"].description
    assert healthy_only["no_oom"].description.startswith("healthy: no OOM in")

    both, settings = night(
        "red", [_endpoint("healthy", ports["healthy"]), _endpoint("starved", ports["starved"])], "2026-11-21"
    )
    check = both["no_oom"]
    starved = f"{project['compose'].project_name}-starved-1"
    assert not check.passed and check.severity.value == "ERROR"
    assert check.description.startswith(f"failed: starved: {starved}: ")
    assert "healthy-1" not in check.description
    assert check.metadata["healthy"].value["status"] == "passed"
    assert not both["no_failed_requests"].passed  # the starved server refused its load test's requests too
    with history.connect(settings.history_file) as con:
        rows = con.execute("SELECT night, endpoint, status FROM oom_watch ORDER BY night, endpoint").fetchall()
    assert [(str(n), e, s) for n, e, s in rows] == [
        ("2026-11-20", "healthy", "passed"),
        ("2026-11-21", "healthy", "passed"),
        ("2026-11-21", "starved", "failed"),
    ]
