"""The values compose/ops/docker-compose.yml interpolates, computed from an idp_ops settings file.

Usage: python compose/ops/platform_env.py --project NAME --image IMAGE --postgres-image IMAGE [--ui-port N]
       [--pg-port N] [--config FILE] > FILE.env   (then: docker compose --env-file FILE.env ...)

No secret is ever written: the Postgres password and the API keys travel as files (compose secrets, or
read-only bind mounts of the key files for run containers); only their paths appear here.

Why the run containers look the way they do (IDP_OPS_RUN_CONTEXT, the code location's --container-context):
- They share the host's network: the stack publishes its endpoints on the host's 127.0.0.1 only, and a deploy
  or validation run probes them there. Postgres is therefore also published on 127.0.0.1 (IDP_OPS_PG_PORT).
- Paths the stack's compose file bind-mounts (models, key files) are host paths given to the host's dockerd,
  so run containers see them at the same absolute paths. The secrets dir is mounted read-write: the api_keys
  asset of deploy_job creates (or rotates) keys there; up.sh hands it (0700) to the service uid the runs use.
- They need the Docker API (deploy, containment drive dockerd): the socket plus its group, nothing more.

Why the data and logs volumes are the host's own dirs (local volumes that bind settings.data_dir and
settings.logs_dir, at the same paths): the host's thermal guard and CLI and the platform's containers must
share one containment latch, one alerts log, one thermal spool and one history. A latch the guard writes
on the host that a deploy run in a container cannot see would let that deploy restart a GPU service the
guard had stopped. `down -v` therefore removes the volumes' names, never the box's history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from idp_ops.settings import load_settings  # noqa: E402
from idp_ops.stack.secrets import POSTGRES_PASSWORD_FILE_NAME  # noqa: E402

CONFIG_IN_CONTAINER = "/etc/idp-ops/idp-ops.yaml"
DOCKER_SOCKET = "/var/run/docker.sock"


def platform_env(project: str, image: str, postgres_image: str, ui_port: int, pg_port: int, config: Path) -> dict:
    settings = load_settings(config)
    uid, gid = settings.service_uid, settings.service_gid
    docker_gid = os.stat(DOCKER_SOCKET).st_gid if os.path.exists(DOCKER_SOCKET) else 0
    password_file = settings.secrets_dir / POSTGRES_PASSWORD_FILE_NAME
    # What every idp_ops process in the platform sees: host paths for what the stack mounts, the volume for data.
    idp_env = {
        "IDP_CONFIG": CONFIG_IN_CONTAINER,
        "IDP_HOME": str(settings.home),
        "IDP_MODELS_DIR": str(settings.models_dir),
        "IDP_SECRETS_DIR": str(settings.secrets_dir),
        "IDP_BACKUPS_DIR": str(settings.backups_dir),
        "IDP_DATA_DIR": str(settings.data_dir),
        "IDP_LOGS_DIR": str(settings.logs_dir),
        "IDP_SERVICE_UID": str(uid),
        "IDP_SERVICE_GID": str(gid),
        # Which platform a process belongs to (its compose project: the Postgres container, the volumes).
        "IDP_OPS_PROJECT": project,
    }
    run_volumes = [
        f"{config}:{CONFIG_IN_CONTAINER}:ro",
        f"{settings.models_dir}:{settings.models_dir}:ro",
        f"{project}-data:{settings.data_dir}",
        f"{project}-logs:{settings.logs_dir}",
        f"{DOCKER_SOCKET}:{DOCKER_SOCKET}",
        f"{settings.secrets_dir}:{settings.secrets_dir}",
        # The backup job writes snapshots there. Where the backup disk is not mounted, docker makes an
        # empty mount point instead, which the backup guard refuses (no marker file): nothing lands on it.
        f"{settings.backups_dir}:{settings.backups_dir}",
    ]
    # Dagster reads the DockerRunLauncher's part of a container context under "docker" only: container_kwargs
    # at the top level are silently ignored (the run then starts with none of the mounts or host networking).
    run_docker = {
        "env_vars": [
            *(f"{k}={v}" for k, v in idp_env.items()),
            "DAGSTER_PG_HOST=127.0.0.1",
            f"DAGSTER_PG_PORT={pg_port}",
            f"DAGSTER_PG_PASSWORD_FILE={password_file}",
        ],
        "container_kwargs": {
            "network_mode": "host",
            "user": f"{uid}:{gid}",
            "group_add": [str(docker_gid)],
            "volumes": run_volumes,
            "read_only": True,
            "tmpfs": {"/tmp": "size=256m,mode=1777"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "mem_limit": "1g",
            "pids_limit": 512,
            "labels": {"idp-ops/ops-project": project},
            "log_config": {"type": "json-file", "config": {"max-size": "20m", "max-file": "3"}},
        },
    }
    run_context = {"docker": run_docker}
    return {
        "COMPOSE_PROJECT_NAME": project,
        "IDP_OPS_PROJECT": project,
        "IDP_OPS_IMAGE": image,
        "IDP_OPS_POSTGRES_IMAGE": postgres_image,
        "IDP_OPS_UI_PORT": str(ui_port),
        "IDP_OPS_PG_PORT": str(pg_port),
        "IDP_OPS_UID": str(uid),
        "IDP_OPS_GID": str(gid),
        "IDP_OPS_DOCKER_GID": str(docker_gid),
        "IDP_OPS_CONFIG_FILE": str(config),
        "IDP_OPS_PASSWORD_FILE": str(password_file),
        "IDP_OPS_RUN_CONTEXT": json.dumps(run_context, separators=(",", ":")),
        **{f"IDP_OPS_{k}": v for k, v in idp_env.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="idp-ops-platform")
    parser.add_argument("--image", required=True)
    parser.add_argument("--postgres-image", required=True)
    parser.add_argument("--ui-port", type=int, default=3000)
    parser.add_argument("--pg-port", type=int, default=15432)
    parser.add_argument("--config", default=os.environ.get("IDP_CONFIG", "idp-ops.yaml"))
    args = parser.parse_args(argv)
    env = platform_env(
        args.project, args.image, args.postgres_image, args.ui_port, args.pg_port, Path(args.config).resolve()
    )
    for key, value in env.items():
        # Compose env files: single quotes keep the JSON literal (no interpolation inside).
        print(f"{key}='{value}'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
