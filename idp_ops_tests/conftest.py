"""Shared fixtures. Tests run against real parts: dockerd, llama-server, the Gemma GGUF, Dagster.

Settings are hermetic: every test gets its own home directory and YAML file, and
IDP_* variables from the caller's shell are removed so they cannot steer a test.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from idp_ops.settings import REPO_ROOT, Settings, load_settings

LOCAL_IMAGE_HINT = "run compose/setup.sh first (it pulls or builds the llama-server image and writes the model)"


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_settings(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(_plain(values), sort_keys=False))
    return path


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def cpu_stack_settings(home: Path, models_dir: Path, image: str, project: str) -> dict:
    """Settings for a CPU-profile stack on free ports, isolated from any other stack on the host."""
    openai_port, llamacpp_port = free_port(), free_port()
    return {
        "profile": "cpu",
        "home": home,
        "models_dir": models_dir,
        "compose_project": project,
        "llama_server_image": image,
        "deploy_timeout_s": 180,
        "stop_timeout_s": 5,
        "endpoints": [
            {
                "name": "openai-standin",
                "protocol": "openai",
                "url": f"http://127.0.0.1:{openai_port}",
                "compose_service": "openai-standin",
                "key_name": "openai_api_key",
                "model": "gemma-3-270m",
                "gpu": True,
            },
            {
                "name": "llamacpp-cpu",
                "protocol": "llamacpp",
                "url": f"http://127.0.0.1:{llamacpp_port}",
                "compose_service": "llamacpp-cpu",
                "key_name": "llamacpp_api_key",
                "model": "gemma-3-270m",
            },
        ],
    }


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def tiny_gguf(path: Path) -> bytes:
    """A small but complete GGUF (header, metadata and tensors) written by the gguf package."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_context_length(2048)
    writer.add_embedding_length(32)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_file_type(1)  # MOSTLY_F16
    for i in range(2):
        writer.add_tensor(f"blk.{i}.attn_q.weight", np.ones((32, 32), dtype=np.float16))
    writer.add_tensor("token_embd.weight", np.ones((100, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()
