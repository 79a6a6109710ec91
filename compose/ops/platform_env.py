"""The values compose/ops/docker-compose.yml (or, for one more box, code-location.yml) interpolates.

Usage: python compose/ops/platform_env.py --project NAME --image IMAGE --postgres-image IMAGE [--ui-port N]
       [--pg-port N] [--pg-bind ADDR] [--config FILE] > FILE.env   (then: docker compose --env-file FILE.env ...)
One more box:  ... --location NAME --project NAME --image IMAGE --config BOX_B.yaml --pg-host ADDR --pg-port N
       --grpc-bind ADDR --grpc-port N [--run-engine tcp://box-b:2376 --run-engine-tls-verify
       --run-engine-cert-path DIR] [--docker-socket PATH] > BOX_B.env   (on box B: compose -f code-location.yml)

No secret is ever written: the Postgres password and the API keys travel as files (compose secrets, or
read-only bind mounts of the key files for run containers); only their paths appear here.

Why the run containers look the way they do (IDP_OPS_RUN_CONTEXT, the code location's --container-context):
- They share the host's network: the stack publishes its endpoints on the host's 127.0.0.1 only, and a deploy
  or validation run probes them there. Postgres is published on 127.0.0.1 (IDP_OPS_PG_PORT) unless
  IDP_OPS_PG_BIND names the address other boxes reach; the runs' DAGSTER_PG_HOST follows it.
- Another box's runs start on that box's engine (the location's IDP_OPS_RUN_ENGINE, read by the platform's
  launcher, idp_ops/platform/launcher.py), with that box's settings, socket and volumes.
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
# The workspace the webserver and daemon load unless IDP_OPS_WORKSPACE names another (inside their containers).
IMAGE_WORKSPACE = "/opt/idp-ops/app/compose/ops/workspace.yaml"
CODE_SERVER_PORT = 4000  # inside the code-location container


def _one_address(name: str, address: str) -> None:
    """A port leaves loopback only on one address another box reaches, never on all interfaces."""
    if address.strip() in {"0.0.0.0", "::", "[::]", "*", ""}:
        raise SystemExit(f"{name} {address!r} would publish on all interfaces: name the one address other boxes reach")


def _settings_env(settings, project: str) -> dict:
    """What every idp_ops process in the platform sees: host paths for what the stack mounts, the volume for data."""
    return {
        "IDP_CONFIG": CONFIG_IN_CONTAINER,
        "IDP_HOME": str(settings.home),
        "IDP_MODELS_DIR": str(settings.models_dir),
        "IDP_SECRETS_DIR": str(settings.secrets_dir),
        "IDP_BACKUPS_DIR": str(settings.backups_dir),
        "IDP_DATA_DIR": str(settings.data_dir),
        "IDP_LOGS_DIR": str(settings.logs_dir),
        "IDP_SERVICE_UID": str(settings.service_uid),
        "IDP_SERVICE_GID": str(settings.service_gid),
        # Which platform a process belongs to (its compose project: the Postgres container, the volumes).
        "IDP_OPS_PROJECT": project,
    }


def _docker_gid(docker_socket: str) -> int:
    return os.stat(docker_socket).st_gid if os.path.exists(docker_socket) else 0


def run_context(
    settings,
    project: str,
    config: Path,
    pg_host: str,
    pg_port: int,
    docker_socket: str = DOCKER_SOCKET,
    run_engine: str | None = None,
    run_engine_tls_verify: bool = False,
    run_engine_cert_path: str | None = None,
    postgres_project: str | None = None,
) -> dict:
    """The container context of a box's runs (the code location's --container-context).

    ``postgres_project``: the compose project whose postgres service holds the instance, on this box's engine:
    the central platform only (its weekly backup dumps it); another box's runs have none.

    ``docker_socket``: the box's dockerd socket on that box, mounted at /var/run/docker.sock in its runs.
    ``run_engine``: that engine as the central daemon reaches it (idp_ops/platform/run_context.py); None: the
    daemon's own engine.
    """
    idp_env = _settings_env(settings, project)
    uid, gid = settings.service_uid, settings.service_gid
    run_volumes = [
        f"{config}:{CONFIG_IN_CONTAINER}:ro",
        # Read-only here; the launcher (BoxDockerRunLauncher) makes it read-write for models_job and restore_job only.
        f"{settings.models_dir}:{settings.models_dir}:ro",
        f"{project}-data:{settings.data_dir}",
        f"{project}-logs:{settings.logs_dir}",
        f"{docker_socket}:{DOCKER_SOCKET}",
        f"{settings.secrets_dir}:{settings.secrets_dir}",
        # The backup job writes snapshots there. Where the backup disk is not mounted, docker makes an
        # empty mount point instead, which the backup guard refuses (no marker file): nothing lands on it.
        f"{settings.backups_dir}:{settings.backups_dir}",
    ]
    engine_vars = []
    if run_engine:
        engine_vars.append(f"IDP_OPS_RUN_ENGINE={run_engine}")
        if run_engine_tls_verify:
            engine_vars.append("IDP_OPS_RUN_ENGINE_TLS_VERIFY=1")
        if run_engine_cert_path:
            engine_vars.append(f"IDP_OPS_RUN_ENGINE_CERT_PATH={run_engine_cert_path}")
    # Dagster reads the DockerRunLauncher's part of a container context under "docker" only: container_kwargs
    # at the top level are silently ignored (the run then starts with none of the mounts or host networking).
    run_docker = {
        "env_vars": [
            *(f"{k}={v}" for k, v in idp_env.items()),
            f"DAGSTER_PG_HOST={pg_host}",
            f"DAGSTER_PG_PORT={pg_port}",
            f"DAGSTER_PG_PASSWORD_FILE={settings.secrets_dir / POSTGRES_PASSWORD_FILE_NAME}",
            *engine_vars,
            *([f"IDP_OPS_POSTGRES_PROJECT={postgres_project}"] if postgres_project else []),
        ],
        "container_kwargs": {
            "network_mode": "host",
            "user": f"{uid}:{gid}",
            "group_add": [str(_docker_gid(docker_socket))],
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
    return {"docker": run_docker}


def _box_env(settings, project: str, image: str, config: Path, context: dict) -> dict:
    """What both env files hold: the project, the image, the service uid, the settings and password files,
    the runs' container context, and the settings' paths as every idp_ops process sees them."""
    return {
        "COMPOSE_PROJECT_NAME": project,
        "IDP_OPS_PROJECT": project,
        "IDP_OPS_IMAGE": image,
        "IDP_OPS_UID": str(settings.service_uid),
        "IDP_OPS_GID": str(settings.service_gid),
        "IDP_OPS_CONFIG_FILE": str(config),
        "IDP_OPS_PASSWORD_FILE": str(settings.secrets_dir / POSTGRES_PASSWORD_FILE_NAME),
        "IDP_OPS_RUN_CONTEXT": json.dumps(context, separators=(",", ":")),
        **{f"IDP_OPS_{k}": v for k, v in _settings_env(settings, project).items()},
    }


def platform_env(
    project: str,
    image: str,
    postgres_image: str,
    ui_port: int,
    pg_port: int,
    config: Path,
    pg_bind: str = "127.0.0.1",
    workspace: str = IMAGE_WORKSPACE,
    docker_socket: str = DOCKER_SOCKET,
    platform_dir: Path | None = None,
) -> dict:
    """The env file of the central platform (compose/ops/docker-compose.yml).

    ``platform_dir``: mounted read-only at /etc/idp-ops/platform in the webserver and the daemon only (a
    workspace naming other boxes, their engines' client credentials); default <home>/ops-platform."""
    _one_address("pg_bind", pg_bind)
    settings = load_settings(config)
    # Runs share the host's network: they reach Postgres where it is published.
    context = run_context(settings, project, config, pg_bind, pg_port, docker_socket, postgres_project=project)
    return {
        **_box_env(settings, project, image, config, context),
        "IDP_OPS_POSTGRES_IMAGE": postgres_image,
        "IDP_OPS_UI_PORT": str(ui_port),
        "IDP_OPS_PG_BIND": pg_bind,
        "IDP_OPS_PG_PORT": str(pg_port),
        "IDP_OPS_WORKSPACE": workspace,
        "IDP_OPS_PLATFORM_DIR": str(platform_dir or settings.home / "ops-platform"),
        "IDP_OPS_DOCKER_GID": str(_docker_gid(docker_socket)),
    }


def location_env(
    location: str,
    project: str,
    image: str,
    config: Path,
    pg_host: str,
    pg_port: int,
    grpc_bind: str = "127.0.0.1",
    grpc_port: int = CODE_SERVER_PORT,
    docker_socket: str = DOCKER_SOCKET,
    run_engine: str | None = None,
    run_engine_tls_verify: bool = False,
    run_engine_cert_path: str | None = None,
) -> dict:
    """The env file of one more box's code location (compose/ops/code-location.yml, on that box's engine).

    ``pg_host``/``pg_port``: the central Postgres as this box reaches it (its code server evaluates sensors
    against the instance, its runs write their events there). The box needs the central password file at
    its own secrets dir. ``grpc_bind``: the box's address the central webserver and daemon reach.
    """
    _one_address("grpc_bind", grpc_bind)
    settings = load_settings(config)
    context = run_context(
        settings,
        project,
        config,
        pg_host,
        pg_port,
        docker_socket,
        run_engine,
        run_engine_tls_verify,
        run_engine_cert_path,
    )
    return {
        **_box_env(settings, project, image, config, context),
        "IDP_OPS_LOCATION_NAME": location,
        "IDP_OPS_GRPC_BIND": grpc_bind,
        "IDP_OPS_GRPC_PORT": str(grpc_port),
        "IDP_OPS_PG_HOST": pg_host,
        "IDP_OPS_PG_PORT": str(pg_port),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="idp-ops-platform")
    parser.add_argument("--image", required=True)
    parser.add_argument("--postgres-image", help="the central platform's Postgres image (not with --location)")
    parser.add_argument("--ui-port", type=int, default=3000)
    parser.add_argument("--pg-port", type=int, default=15432)
    parser.add_argument(
        "--pg-bind",
        default=os.environ.get("IDP_OPS_PG_BIND", "127.0.0.1"),
        help="where Postgres is published (default $IDP_OPS_PG_BIND or 127.0.0.1); other boxes' runs reach it there",
    )
    parser.add_argument("--workspace", default=os.environ.get("IDP_OPS_WORKSPACE", IMAGE_WORKSPACE))
    parser.add_argument("--config", default=os.environ.get("IDP_CONFIG", "idp-ops.yaml"))
    parser.add_argument(
        "--platform-dir", help="mounted read-only into the webserver and daemon (default: <home>/ops-platform)"
    )
    parser.add_argument("--docker-socket", default=DOCKER_SOCKET, help="this box's dockerd socket, on this box")
    box = parser.add_argument_group("one more box's code location (compose/ops/code-location.yml)")
    box.add_argument("--location", metavar="NAME", help="write that location's env file instead of the platform's")
    box.add_argument("--grpc-port", type=int, default=CODE_SERVER_PORT, help="published gRPC port on the box")
    box.add_argument("--grpc-bind", default="127.0.0.1", help="the box's address the central platform reaches")
    box.add_argument("--pg-host", help="the central Postgres as this box reaches it (its published address)")
    box.add_argument(
        "--run-engine", help="the box's dockerd as the central daemon reaches it (unix://, ssh://, tcp://)"
    )
    box.add_argument("--run-engine-tls-verify", action="store_true")
    box.add_argument("--run-engine-cert-path", help="ca.pem, cert.pem, key.pem: a dir inside the central daemon")
    args = parser.parse_args(argv)
    config = Path(args.config).resolve()
    if args.location:
        if not args.pg_host:
            parser.error("--location needs --pg-host (the central Postgres as that box reaches it)")
        env = location_env(
            args.location,
            args.project,
            args.image,
            config,
            args.pg_host,
            args.pg_port,
            args.grpc_bind,
            args.grpc_port,
            args.docker_socket,
            args.run_engine,
            args.run_engine_tls_verify,
            args.run_engine_cert_path,
        )
    else:
        if not args.postgres_image:
            parser.error("--postgres-image is required (unless --location)")
        env = platform_env(
            args.project,
            args.image,
            args.postgres_image,
            args.ui_port,
            args.pg_port,
            config,
            args.pg_bind,
            args.workspace,
            args.docker_socket,
            Path(args.platform_dir).resolve() if args.platform_dir else None,
        )
    for key, value in env.items():
        # Compose env files: single quotes keep the JSON literal (no interpolation inside).
        print(f"{key}='{value}'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
