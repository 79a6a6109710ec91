"""Shared fixtures. Tests run against real parts: dockerd, llama-server, the Gemma GGUF, Dagster.

Settings are hermetic: every test gets its own home directory and YAML file, and
IDP_* variables from the caller's shell are removed so they cannot steer a test.

This file holds fixtures only; the helpers tests share live in idp_ops_harness/.
"""

from __future__ import annotations

import os
import subprocess
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from idp_ops.settings import REPO_ROOT, Settings, load_settings
from idp_ops_harness.range_server import RangeHandler, ServerState

LOCAL_IMAGE_HINT = "run compose/setup.sh first (it pulls or builds the llama-server image and writes the model)"


@pytest.fixture(scope="session", autouse=True)
def _remove_this_runs_stacks():
    """Whatever a test leaves running (a failure before its own cleanup) goes at the end."""
    yield
    from idp_ops_harness.projects import remove_projects_of_this_run

    try:
        remove_projects_of_this_run()
    except (OSError, subprocess.SubprocessError) as exc:  # no docker here: nothing of ours can be running
        print(f"cleanup of this run's compose projects skipped: {exc}")


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("IDP_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def repo_settings() -> Settings:
    """The repo's own settings (what compose/setup.sh prepared): image name and demo model location."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("IDP_")}
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        return load_settings()
    finally:
        os.chdir(cwd)
        os.environ.update(saved)


@pytest.fixture(scope="session")
def docker_ready() -> str:
    from idp_ops.stack.compose import DockerUnavailable, check_docker

    try:
        return check_docker()
    except DockerUnavailable as exc:
        pytest.fail(f"these tests need a running dockerd: {exc}")


@pytest.fixture(scope="session")
def llama_image(repo_settings, docker_ready) -> str:
    image = repo_settings.llama_server_image
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        pytest.fail(f"llama-server image {image} is missing: {LOCAL_IMAGE_HINT}")
    return image


@pytest.fixture(scope="session")
def demo_models_dir(repo_settings) -> Path:
    from idp_ops.models.demo_model import fetch_demo_model

    return fetch_demo_model(repo_settings.models_dir).parent


@pytest.fixture
def server():
    """A Range-capable HTTP file server on a free loopback port (support/range_server.py); ``server.state``
    scripts its files and misbehaviour, ``server.base`` is its URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.daemon_threads = True
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
