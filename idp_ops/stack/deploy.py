"""Deploy the stack and prove it; contain the GPU service; the containment latch.

Plain functions over Settings, used by the Dagster assets/jobs and the CLI alike.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from idp_ops.errors import ProblemFound
from idp_ops.fsutil import atomic_write_json
from idp_ops.models.router import RouterError, prove_router_listing, write_router_presets
from idp_ops.settings import Settings
from idp_ops.stack.audit import audit_gate
from idp_ops.stack.compose import (
    ComposeError,
    ComposeProject,
    ServiceState,
    check_docker,
    container_time,
    image_id,
)
from idp_ops.stack.probe import ProbeResult, probe_endpoint, wait_until_ready
from idp_ops.stack.secrets import read_key

Log = Callable[[str], None]


class DeployError(ProblemFound, RuntimeError):
    pass


class ContainmentError(DeployError):
    """The GPU services could not be verified stopped within the retry window."""


def _quiet(_: str) -> None:
    pass


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def compose_project(settings: Settings) -> ComposeProject:
    return ComposeProject(
        settings.compose_file,
        settings.compose_project,
        profiles=settings.compose_profiles,
        environment=settings.compose_environment(),
        engine=settings.docker_engine,
    )


# -- deploy ------------------------------------------------------------------


@dataclass
class DeployReport:
    project: str
    compose_file: str
    services: list[dict]
    endpoints: list[dict]
    up_seconds: float
    total_seconds: float
    rearmed: bool
    ok: bool
    problems: list[str] = field(default_factory=list)
    # Which Docker engine the deploy drove (host without secrets, where the value came from).
    engine: dict = field(default_factory=dict)


def preflight(settings: Settings) -> list[str]:
    """Cheap checks that turn the commonest failures into one clear sentence each."""
    problems = []
    check_docker(engine=settings.docker_engine)
    if settings.profile == "cpu":
        model = settings.models_dir / settings.cpu_model_file
        if not model.is_file():
            problems.append(f"model file {model} is missing: run `idp-ops models fetch-demo` (or set IDP_MODELS_DIR)")
    for key_name in settings.key_names:
        path = settings.secrets_dir / key_name
        if not path.is_file():
            problems.append(f"key {key_name} is missing in {settings.secrets_dir}: run `idp-ops secrets generate`")
        elif path.stat().st_uid != settings.service_uid and not path.stat().st_mode & 0o004:
            # The service would crash-loop on "failed to open file" behind a healthcheck timeout.
            problems.append(
                f"key {key_name} is not readable by the services' uid {settings.service_uid}: "
                "run `idp-ops secrets generate` (it hands key files to that uid)"
            )
    return problems


def deploy(settings: Settings, *, log: Log = _quiet) -> DeployReport:
    """Bring the configured profile up, wait for health, then prove every endpoint.

    On failure the error says which containers are left running, so nothing is
    left half-started without saying so.
    """
    started = time.monotonic()
    problems = preflight(settings)
    if problems:
        raise DeployError("cannot deploy:\n  - " + "\n  - ".join(problems))
    project = compose_project(settings)
    # A router endpoint's preset is written from the GGUF headers before compose reads anything.
    try:
        router_plans = write_router_presets(settings, log=log)
    except RouterError as exc:
        raise DeployError(f"cannot deploy: {exc}") from None
    log(f"validating {settings.compose_file.name} with compose")
    project.config()  # first: a file compose cannot read is reported in compose's own words
    # Every caller passes the gate, not only the CLI and deploy_job (both also run it first).
    audit_gate(settings)
    log(
        f"starting project {settings.compose_project} (profile {settings.profile}) on engine "
        f"{project.engine.label()}; waiting for healthchecks"
    )
    stale = services_with_stale_keys(settings, project)
    # From here on the GPU service may run again, so the watch must protect it again;
    # the containment record itself stays until the whole deploy is proven.
    if mark_latch_rearmed(settings):
        log("containment latch marked re-armed: the thermal watch protects the GPU service again")
    try:
        up_seconds = project.up(timeout=settings.deploy_timeout_s)
        if stale:
            # A container keeps the key file it started with (bind mounts follow the inode,
            # and key writes are atomic renames): recreate those whose key is newer.
            log(f"keys rotated since {', '.join(stale)} started: recreating them")
            up_seconds += project.up(stale, timeout=settings.deploy_timeout_s, force_recreate=True)
    except ComposeError as exc:
        raise DeployError(f"{exc}\n{_left_behind(project)}") from None
    log(f"containers healthy after {up_seconds:.1f} s; probing endpoints")

    results: list[ProbeResult] = []
    for endpoint in settings.endpoints or []:
        key_file = settings.key_file(endpoint)
        key = read_key(key_file) if key_file else None
        wait_until_ready(endpoint.url, timeout_s=min(120, settings.deploy_timeout_s))
        result = probe_endpoint(endpoint.name, endpoint.url, endpoint.protocol, endpoint.model, key)
        log(
            f"{endpoint.name}: health {result.health_status}, without key {result.unauthenticated_status}, "
            f"with key {result.authenticated_status} ({result.completion_ms:.0f} ms)"
        )
        results.append(result)

    services = [_service_row(state, project) for state in project.ps()]
    all_problems = [f"{r.endpoint}: {p}" for r in results for p in r.problems]
    all_problems += prove_router_listing(settings, router_plans, log=log)
    # Only a proven deploy closes the containment record; a failed one leaves it (re-armed).
    rearmed = clear_latch(settings) if not all_problems else False
    if rearmed:
        log("containment latch cleared: the thermal guard is re-armed")
    return DeployReport(
        project=settings.compose_project,
        compose_file=str(settings.compose_file),
        services=services,
        endpoints=[r.as_dict() for r in results],
        up_seconds=round(up_seconds, 2),
        total_seconds=round(time.monotonic() - started, 2),
        rearmed=rearmed,
        ok=not all_problems,
        problems=all_problems,
        engine=project.engine.describe(),
    )


def services_with_stale_keys(settings: Settings, project: ComposeProject) -> list[str]:
    """Running services whose key file changed after they started."""
    containers = {s.service: s.container for s in project.ps() if s.running}
    stale = []
    for endpoint in settings.endpoints or []:
        key_file = settings.key_file(endpoint)
        service = endpoint.compose_service
        if not key_file or not service or service not in containers or not key_file.exists():
            continue
        started = container_time(containers[service], "StartedAt", engine=project.engine)
        modified = datetime.fromtimestamp(key_file.stat().st_mtime, tz=UTC)
        if started is not None and modified > started and service not in stale:
            stale.append(service)
    return stale


def _service_row(state: ServiceState, project: ComposeProject) -> dict:
    return {
        "service": state.service,
        "container": state.container,
        "state": state.state,
        "health": state.health,
        "image": state.image,
        "image_id": image_id(state.image, engine=project.engine),
        "ports": ", ".join(f"{p['host_ip']}:{p['published']}->{p['target']}" for p in state.ports),
    }


def _left_behind(project: ComposeProject) -> str:
    try:
        states = project.ps()
    except ComposeError:
        return "  (could not list the project's containers afterwards)"
    running = [s for s in states if s.running]
    if not running:
        return "  nothing of this project is left running"
    described = ", ".join(f"{s.service} ({s.health or s.state})" for s in running)
    return f"  left running: {described}; stop them with `idp-ops down` or fix and deploy again"


# -- containment -------------------------------------------------------------


@dataclass
class ContainmentReport:
    reason: str
    reading: dict
    services: list[str]
    stopped: list[str]
    still_running: list[str]
    stop_seconds: float
    contained_at: str
    ok: bool
    attempts: int = 1
    failed_attempts: list[str] = field(default_factory=list)
    # The engine the stop went to: on a multi-box setup, which box's dockerd was asked.
    engine: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def contain(
    settings: Settings,
    reason: str,
    reading: dict | None = None,
    *,
    log: Log = _quiet,
    retry_for_s: float | None = None,
    retry_interval_s: float = 2.0,
    on_failed_attempt: Callable[[int, str], None] | None = None,
) -> ContainmentReport:
    """Stop the GPU services, verify they stopped, and only then latch until a person re-arms.

    A failed attempt (dockerd restarting, compose erroring, a stop that times out, a
    service still running) is reported to ``on_failed_attempt`` and tried again every
    ``retry_interval_s`` for ``retry_for_s`` (default: settings.thermal.contain_retry_s);
    then ContainmentError. The latch is never written for an unverified stop: the watch
    keeps the containment pending and asks again.
    """
    services = list(settings.gpu_services or [])
    if not services:
        raise DeployError("no GPU services configured to contain (settings.gpu_services is empty)")
    project = compose_project(settings)
    window = settings.thermal.contain_retry_s if retry_for_s is None else retry_for_s
    deadline = time.monotonic() + window
    failures: list[str] = []
    while True:
        attempt = len(failures) + 1
        log(f"containment: stopping {', '.join(services)} ({reason}; attempt {attempt})")
        try:
            stop_seconds = project.stop(services, timeout=settings.stop_timeout_s)
            # A service without a container is not running; one that compose lists must not be.
            still_running = [s.service for s in project.ps(services) if s.service in services and s.running]
            if not still_running:
                break
            error = f"still running after the stop: {', '.join(still_running)}"
        except ComposeError as exc:
            said = [line.strip() for line in exc.stderr.splitlines() if line.strip()]
            error = str(exc).splitlines()[0] + (f": {said[-1]}" if said else "")
        failures.append(error)
        log(f"containment attempt {attempt} failed: {error}")
        if on_failed_attempt is not None:
            on_failed_attempt(attempt, error)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ContainmentError(
                f"GPU services {services} not verified stopped after {attempt} attempt(s) in {window:.0f} s; "
                f"last error: {error}"
            )
        time.sleep(min(retry_interval_s, remaining))
    report = ContainmentReport(
        reason=reason,
        reading=reading or {},
        services=services,
        stopped=services,
        still_running=[],
        stop_seconds=round(stop_seconds, 3),
        contained_at=now_iso(),
        ok=True,
        attempts=len(failures) + 1,
        failed_attempts=failures,
        engine=project.engine.describe(),
    )
    try:
        write_latch(settings, report.as_dict())
    except OSError as exc:
        # Stopped and verified, but no record anywhere: fail so the watch keeps it pending
        # and asks again (a no-op stop) until the record lands.
        raise ContainmentError(f"GPU services stopped and verified, but the latch could not be written: {exc}") from exc
    return report


def mark_latch_rearmed(settings: Settings) -> bool:
    """Keep the containment record but let the watch protect the service again (a deploy started)."""
    latch = read_latch(settings)
    if latch is None or latch.get("rearmed_at"):
        return False
    write_latch(settings, {**latch, "rearmed_at": now_iso(), "rearmed_by": "deploy"})
    return True


def _latch_paths(settings: Settings) -> list[Path]:
    """Where the latch lives: the data dir, else a memory-backed fallback.

    A full data disk must not turn a verified stop into a failed containment (and an
    endless retry): the record goes to /dev/shm instead, which holds until reboot, and
    a stopped container stays stopped across one.
    """
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    digest = hashlib.sha256(str(settings.data_dir).encode()).hexdigest()[:12]
    return [settings.containment_latch_file, shm / f"idp-ops-{digest}" / "containment.json"]


def write_latch(settings: Settings, record: dict) -> Path:
    """Write the latch where it fits; OSError only when it fits nowhere."""
    primary, fallback = _latch_paths(settings)
    try:
        atomic_write_json(primary, record)
        fallback.unlink(missing_ok=True)  # an older fallback record must not outlive this one
        return primary
    except OSError as first:
        try:
            atomic_write_json(fallback, {**record, "stored_in_fallback_because": str(first)})
            return fallback
        except OSError:
            raise first from None


def read_latch(settings: Settings) -> dict | None:
    for path in _latch_paths(settings):
        if not path.exists():
            continue
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            # A damaged latch still means "contained": fail safe.
            return {"reason": f"containment latch file {path} is unreadable", "damaged": True}
    return None


def clear_latch(settings: Settings) -> bool:
    cleared = False
    for path in _latch_paths(settings):
        if path.exists():
            path.unlink()
            cleared = True
    return cleared
