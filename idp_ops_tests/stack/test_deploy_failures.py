"""Bad input on the real stack: each a clear error, nothing left half-started without saying so."""

import os
import re
import socket
import subprocess
import sys

import pytest
import yaml
from dagster import DagsterInstance

from idp_ops.definitions import defs
from idp_ops.resources import SettingsResource, StackResource
from idp_ops.settings import load_settings
from idp_ops.stack.compose import ComposeError, DockerUnavailable, check_docker
from idp_ops.stack.deploy import DeployError, compose_project, deploy
from idp_ops.stack.secrets import ensure_keys
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

pytestmark = [pytest.mark.docker]


def make_settings(tmp_path, models_dir, image, project, **changes):
    values = cpu_stack_settings(tmp_path / "home", models_dir, image, project)
    values.update(changes)
    return load_settings(write_settings(tmp_path / "idp-ops.yaml", **values))


def with_keys(settings):
    ensure_keys(
        settings.secrets_dir, settings.key_names, owner_uid=settings.service_uid, owner_gid=settings.service_gid
    )
    return settings


def running_services(settings):
    """Asked of dockerd directly, so it also works when the compose file is broken."""
    out = subprocess.run(
        [
            "docker",
            "ps",
            "--filter",
            f"label=com.docker.compose.project={settings.compose_project}",
            "--format",
            '{{.Label "com.docker.compose.service"}}',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(out.split())


def test_unreachable_dockerd_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(DockerUnavailable, match="dockerd is not reachable"):
        check_docker()


def test_cli_deploy_with_dockerd_down_exits_2_without_a_traceback(tmp_path, demo_models_dir):
    config = write_settings(
        tmp_path / "idp-ops.yaml", **cpu_stack_settings(tmp_path / "home", demo_models_dir, "x", "idp-ops-nodocker")
    )
    env = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent/docker.sock", "IDP_CONFIG": str(config)}
    result = subprocess.run(
        [sys.executable, "-m", "idp_ops.cli", "deploy"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2
    assert "dockerd is not reachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_and_keys_are_named_before_anything_starts(tmp_path, llama_image, docker_ready):
    settings = make_settings(tmp_path, tmp_path / "empty-models", llama_image, "idp-ops-nomodel")
    with pytest.raises(DeployError, match="cannot deploy") as info:
        deploy(settings)
    message = str(info.value)
    assert "gemma-3-270m-q4_k_m.gguf is missing" in message and "idp-ops models fetch-demo" in message
    assert "key openai_api_key is missing" in message
    assert running_services(settings) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can create key files another uid cannot read")
def test_key_files_the_service_cannot_read_are_named(tmp_path, demo_models_dir, llama_image, docker_ready):
    settings = make_settings(tmp_path, demo_models_dir, llama_image, "idp-ops-keyowner")
    ensure_keys(settings.secrets_dir, settings.key_names)  # root-owned 0600: unreadable by uid 65534
    with pytest.raises(DeployError, match="not readable by the services' uid 65534"):
        deploy(settings)
    assert running_services(settings) == []


def test_missing_image_is_named_and_nothing_is_left_running(tmp_path, demo_models_dir, docker_ready):
    settings = with_keys(
        make_settings(tmp_path, demo_models_dir, "idp-ops/no-such-image:never", "idp-ops-noimage", deploy_timeout_s=60)
    )
    try:
        with pytest.raises(DeployError, match="image is not available") as info:
            deploy(settings)
        message = str(info.value)
        assert "nothing of this project is left running" in message
        assert running_services(settings) == []
    finally:
        compose_project(settings).down()


def hold_port(port: int) -> socket.socket:
    """Listen on 127.0.0.1:port, and prove nothing else can bind it now."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen(1)
    with socket.socket() as other, pytest.raises(OSError, match="Address already in use"):
        other.bind(("127.0.0.1", port))
    return holder


def test_port_already_taken_says_so_naming_the_port_and_nothing_is_left_running(tmp_path, demo_models_dir, llama_image):
    # Every published port of the project is held before the deploy, so no service can start
    # (one held port would let the other service start or not, as compose's parallel start goes).
    settings = with_keys(make_settings(tmp_path, demo_models_dir, llama_image, "idp-ops-portclash"))
    taken = {endpoint.port for endpoint in settings.endpoints}
    holders = [hold_port(port) for port in sorted(taken)]
    try:
        with pytest.raises(DeployError, match="port is already in use") as info:
            deploy(settings)
        message = str(info.value)
        named = {int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", message)}
        assert named and named <= taken, message
        assert "nothing of this project is left running" in message
        assert running_services(settings) == []
    finally:
        for holder in holders:
            holder.close()
        compose_project(settings).down()
    assert running_services(settings) == []


def test_compose_file_that_does_not_parse_is_reported_with_composes_words(tmp_path, demo_models_dir, llama_image):
    bad = tmp_path / "broken.yml"
    bad.write_text("services:\n  web:\n    image: [unclosed\n")
    settings = with_keys(make_settings(tmp_path, demo_models_dir, llama_image, "idp-ops-badfile", compose_file=bad))
    with pytest.raises(ComposeError, match="`compose config` failed") as info:
        deploy(settings)
    assert "docker said:" in str(info.value)
    assert running_services(settings) == []


def test_high_audit_finding_blocks_the_deploy_before_anything_starts(tmp_path, demo_models_dir, llama_image):
    """The shipped CPU file with one port opened to every interface: the blocking check stops deploy_job."""
    shipped = load_settings(write_settings(tmp_path / "base.yaml", home=str(tmp_path))).compose_file
    model = yaml.safe_load(shipped.read_text())
    model["services"]["llamacpp-cpu"]["ports"] = ["0.0.0.0:${IDP_LLAMACPP_PORT:-18001}:8080"]
    exposed = tmp_path / "compose" / "docker-compose.cpu.yml"
    exposed.parent.mkdir()
    exposed.write_text(yaml.safe_dump(model, sort_keys=False))
    config = write_settings(
        tmp_path / "idp-ops.yaml",
        **{
            **cpu_stack_settings(tmp_path / "home", demo_models_dir, llama_image, "idp-ops-exposed"),
            "compose_file": exposed,
        },
    )
    settings = load_settings(config)
    resource = SettingsResource(config_file=str(config))
    (tmp_path / "dagster_home").mkdir()
    with DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster_home")) as instance:
        result = defs.resolve_job_def("deploy_job").execute_in_process(
            instance=instance,
            resources={"settings": resource, "stack": StackResource(settings=resource)},
            raise_on_error=False,
        )
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "no_high_findings" and not check.passed
    assert "CIS-5.14" in check.description and "llamacpp-cpu" in check.description
    assert not result.asset_materializations_for_node("stack_deployment")
    assert running_services(settings) == []
