"""Settings files for tests: YAML written from plain values, and a CPU stack on free ports."""

from __future__ import annotations

from pathlib import Path

import yaml

from idp_ops_harness.ports import free_port
from idp_ops_harness.projects import unique_project


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
        "compose_project": unique_project(project),
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
