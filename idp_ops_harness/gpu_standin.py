"""A GPU service stood in for by a container of the llama-server image running busybox `sleep`
(no model, starts in a fraction of a second), on real dockerd and compose."""

from __future__ import annotations

import uuid

from idp_ops.settings import load_settings
from idp_ops.stack.deploy import compose_project
from idp_ops_harness.projects import unique_project
from idp_ops_harness.settings_files import write_settings

GPU_STANDIN = """\
services:
  gpu-standin:
    image: ${IDP_LLAMA_SERVER_IMAGE}
    entrypoint: ["/bin/busybox", "sleep", "3600"]
    restart: unless-stopped
    network_mode: none
    stop_grace_period: 1s
    user: "65534:65534"
    read_only: true
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    logging: {driver: json-file, options: {max-size: "1m", max-file: "2"}}
    healthcheck: {test: ["CMD", "/bin/busybox", "true"], interval: 5s}
    deploy: {resources: {limits: {cpus: "0.1", memory: 32m, pids: 16}}}
"""


def standin_settings(tmp_path, image, **extra):
    compose = tmp_path / "gpu-standin.yml"
    compose.write_text(GPU_STANDIN)
    values = {
        "profile": "gpu",
        "home": str(tmp_path / "home"),
        "compose_file": str(compose),
        "compose_project": unique_project(f"idp-test-contain-{uuid.uuid4().hex[:4]}"),
        "llama_server_image": image,
        "gpu_services": ["gpu-standin"],
        "stop_timeout_s": 2,
        "endpoints": [],
        **extra,
    }
    return load_settings(write_settings(tmp_path / "idp-ops.yaml", **values))


def running(settings) -> set[str]:
    return {s.service for s in compose_project(settings).ps() if s.running}
