"""One Docker engine per code location: the settings' docker_host reaches every docker call.

The fast tests point the settings and an inherited DOCKER_HOST at two listening unix
sockets and count which one the real docker / compose CLIs connect to. The slow test
deploys the CPU stack onto a real second dockerd (its own network namespace, socket,
data root) and contains it there, while the caller's DOCKER_HOST names the host engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from idp_ops.models.switch import _container_state
from idp_ops.settings import SettingsError, load_settings
from idp_ops.stack import compose as compose_module
from idp_ops.stack.compose import DockerUnavailable, check_docker, container_time, docker_cli, image_id
from idp_ops.stack.deploy import ContainmentError, compose_project, contain, deploy
from idp_ops.stack.engine import DockerEngine
from idp_ops.stack.secrets import ensure_keys
from idp_ops.validation.oom_watch import OomWatch
from idp_ops_harness.docker_engine import SecondEngine
from idp_ops_harness.projects import unique_project
from idp_ops_harness.settings_files import cpu_stack_settings, write_settings

needs_docker_cli = pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI")


class CountingSocket:
    """A unix socket that counts connections and closes each at once: a dockerd that is not there."""

    def __init__(self, path):
        self.path = path
        self.host = f"unix://{path}"
        self.connections = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self):
        self.server.close()


@pytest.fixture
def two_sockets(tmp_path, monkeypatch):
    named, inherited = CountingSocket(tmp_path / "named.sock"), CountingSocket(tmp_path / "inherited.sock")
    monkeypatch.setenv("DOCKER_HOST", inherited.host)
    monkeypatch.setattr(compose_module, "DOCKER_CALL_TIMEOUT_S", 10.0)
    yield named, inherited
    named.close()
    inherited.close()


def test_engine_settings_are_validated_with_clear_errors():
    cases = {
        "ftp://box-b": "docker_host must be unix:///PATH, ssh://USER@HOST or tcp://HOST:PORT",
        "unix://relative.sock": "needs an absolute socket path",
        "ssh://ops:hunter2@box-b": "must not carry a password",
        "tcp://10.0.0.2:2375": "plain tcp to another host: set docker_tls_verify",
    }
    for host, message in cases.items():
        with pytest.raises(SettingsError, match=message) as raised:
            load_settings(docker_host=host)
        assert "hunter2" not in str(raised.value)
    with pytest.raises(SettingsError, match="docker_tls_verify applies to a tcp:// docker_host only"):
        load_settings(docker_host="ssh://ops@box-b", docker_tls_verify=True)
    with pytest.raises(SettingsError, match=r"docker_cert_path .*IDP_DOCKER_CERT_PATH"):
        load_settings(docker_cert_path="/etc/certs")
    tls = load_settings(docker_host="tcp://box-b:2376", docker_tls_verify=True, docker_cert_path="/etc/idp/certs")
    assert tls.docker_engine == DockerEngine("tcp://box-b:2376", True, tls.docker_cert_path)
    assert load_settings(docker_host="  ").docker_host is None


def test_the_settings_engine_replaces_every_inherited_engine_variable(tmp_path):
    inherited = {"DOCKER_HOST": "unix:///elsewhere.sock", "DOCKER_TLS_VERIFY": "1", "DOCKER_CONTEXT": "other", "X": "y"}
    plain = DockerEngine("ssh://ops@box-b").environment(inherited)
    assert plain == {"DOCKER_HOST": "ssh://ops@box-b", "X": "y"}, "TLS off means unset: the CLI reads any value as on"
    tls = DockerEngine("tcp://box-b:2376", True, tmp_path).environment(inherited)
    assert tls["DOCKER_TLS_VERIFY"] == "1" and tls["DOCKER_CERT_PATH"] == str(tmp_path)
    # No setting: the process's own variables pass through untouched, docker's default without any.
    assert DockerEngine().environment(inherited) == inherited
    assert "DOCKER_HOST" not in DockerEngine().environment({"PATH": "/bin"})


def test_tls_files_are_checked_before_the_first_call(tmp_path):
    settings = load_settings(docker_host="tcp://127.0.0.1:2376", docker_tls_verify=True, docker_cert_path=tmp_path)
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(DockerUnavailable, match=r"needs TLS client files that are missing: .*cert\.pem.*key\.pem"):
        check_docker(engine=settings.docker_engine)


@needs_docker_cli
def test_every_docker_call_goes_to_the_settings_engine_not_the_inherited_one(tmp_path, two_sockets):
    named, inherited = two_sockets
    settings = load_settings(write_settings(tmp_path / "idp-ops.yaml", home=tmp_path / "home", docker_host=named.host))
    engine = settings.docker_engine
    project = compose_project(settings)
    calls = {
        "preflight (check_docker)": lambda: check_docker(timeout=10, engine=engine),
        "deploy": lambda: deploy(settings),
        "containment (compose stop)": lambda: contain(settings, "test", {}, retry_for_s=0),
        "status (compose ps)": project.ps,
        "container_time": lambda: container_time("c", engine=engine),
        "image_id": lambda: image_id("i", engine=engine),
        "switch (container state)": lambda: _container_state(project, "c"),
        "oom watch": lambda: OomWatch(settings.compose_project, ["llamacpp-cpu"], engine=engine).poll(),
    }
    reached, strayed = {}, {}
    for name, call in calls.items():
        before, before_inherited = named.connections, inherited.connections
        # Nothing answers there; what matters is where the call went.
        with contextlib.suppress(DockerUnavailable, ContainmentError, compose_module.ComposeError):
            call()
        reached[name] = named.connections - before
        strayed[name] = inherited.connections - before_inherited
    assert all(count > 0 for count in reached.values()), reached
    # No call may follow the inherited DOCKER_HOST when the settings name an engine.
    assert not any(strayed.values()), strayed

    # Without the setting, the inherited DOCKER_HOST is the engine.
    docker_cli("version", engine=load_settings(home=str(tmp_path / "home")).docker_engine)
    assert inherited.connections > 0


def test_reports_name_the_engine_without_secrets(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "ssh://ops@box-c")
    assert load_settings(docker_host="ssh://ops@box-b").docker_engine.describe() == {
        "host": "ssh://ops@box-b",
        "source": "settings",
        "tls_verify": False,
    }
    assert DockerEngine().describe()["source"] == "environment"
    assert not DockerEngine().is_local and DockerEngine("unix:///run/b.sock").is_local
    monkeypatch.delenv("DOCKER_HOST")
    assert DockerEngine().describe() == {
        "host": "unix:///var/run/docker.sock",
        "source": "default",
        "tls_verify": False,
    }


# -- a real second engine -----------------------------------------------------------------

ENGINE_NAME = "idp-loc-b"


@pytest.fixture
def box_b(llama_image):
    engine = SecondEngine(ENGINE_NAME)
    engine.start()
    try:
        engine.load_image(llama_image)
        yield engine
    finally:
        engine.stop()


def _services(ps_output: str) -> dict[str, str]:
    return dict(line.split() for line in ps_output.splitlines() if line.strip())


def _project_containers(docker: list[str], project: str) -> dict[str, str]:
    out = subprocess.run(
        [*docker, "ps", "-a", "--filter", f"label=com.docker.compose.project={project}", "--format", PS_FORMAT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return _services(out.stdout)


PS_FORMAT = '{{.Label "com.docker.compose.service"}} {{.State}}'


@pytest.mark.docker
@pytest.mark.model
def test_a_location_deploys_and_contains_only_on_its_own_engine(
    tmp_path, box_b, llama_image, demo_models_dir, monkeypatch
):
    project_name = unique_project("idp-engine-b")
    values = cpu_stack_settings(tmp_path / "home", demo_models_dir, llama_image, "idp-engine-b")
    values["compose_project"] = project_name
    config = write_settings(tmp_path / "idp-ops.yaml", **values, docker_host=box_b.host)
    settings = load_settings(config)
    ensure_keys(
        settings.secrets_dir, settings.key_names, owner_uid=settings.service_uid, owner_gid=settings.service_gid
    )
    # The caller's shell names the host engine: the location's setting must win over it.
    host_engine = "unix:///var/run/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", host_engine)
    env = {**os.environ, "IDP_CONFIG": str(config)}
    idp_ops = [str(Path(sys.executable).parent / "idp-ops")]
    try:
        # B's published ports live in B's network namespace: the deploy's probes run there too.
        deployed = subprocess.run(
            ["nsenter", f"--net=/run/netns/{ENGINE_NAME}", *idp_ops, "deploy", "--json"],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=tmp_path,
        )
        assert deployed.returncode == 0, deployed.stderr[-3000:] + deployed.stdout[-2000:]
        report = json.loads(deployed.stdout)
        assert report["ok"] and report["engine"] == {"host": box_b.host, "source": "settings", "tls_verify": False}
        assert {e["endpoint"]: e["authenticated_status"] for e in report["endpoints"]} == {
            "openai-standin": 200,
            "llamacpp-cpu": 200,
        }
        assert _project_containers(["docker", "-H", box_b.host], project_name) == {
            "openai-standin": "running",
            "llamacpp-cpu": "running",
        }
        assert _project_containers(["docker", "-H", host_engine], project_name) == {}, "nothing on the host engine"

        # Containment (what the guard and containment_job call), from the host namespace.
        contained = contain(load_settings(config), "overheat on box B", {"episode": "b-1"}, retry_for_s=60)
        assert contained.ok and contained.engine["host"] == box_b.host
        assert _project_containers(["docker", "-H", box_b.host], project_name) == {
            "openai-standin": "exited",
            "llamacpp-cpu": "running",
        }

        status = subprocess.run([*idp_ops, "status", "--json"], capture_output=True, text=True, timeout=120, env=env)
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert shown["engine"]["host"] == box_b.host and shown["containment"]["reading"]["episode"] == "b-1"
        assert {s["service"]: s["state"] for s in shown["services"]}["openai-standin"] == "exited"
    finally:
        compose_project(settings).down(timeout=2)
        assert _project_containers(["docker", "-H", box_b.host], project_name) == {}
