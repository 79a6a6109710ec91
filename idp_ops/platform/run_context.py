"""What a run container of the ops platform looks like, decided per box and per job (no Dagster import).

Two decisions the stock DockerRunLauncher cannot make, as plain functions its subclass applies
(idp_ops/platform/launcher.py):

- **Which engine** a location's runs start on. The location's container context carries it in its
  ``docker.env_vars`` as ``IDP_OPS_RUN_ENGINE`` (``unix:///…``, ``ssh://user@box``, ``tcp://box:2376``)
  plus ``IDP_OPS_RUN_ENGINE_TLS_VERIFY`` / ``IDP_OPS_RUN_ENGINE_CERT_PATH``: the engine *as the central
  daemon reaches it*. Why env vars and not a label: env_vars is the one field of the docker context that
  Dagster merges by appending (instance, then location; the later value wins), so the instance may name a
  default engine that a location overrides; ``container_kwargs`` merges shallowly, and a location's
  ``labels`` would replace every label the instance set. The launcher removes these variables from the run
  container's environment: inside, the run drives its own box's engine through the socket it mounts, and
  the central view of that engine means nothing there. Absent: the daemon's own environment
  (``docker.from_env()``), the stock behaviour.
- **The models mount** (``IDP_MODELS_DIR`` of the same env_vars names it): read-only for every job, except
  the jobs that write models (``models_job`` downloads, ``restore_job`` restores), which get it read-write.
  The launcher enforces it whatever the context says, so a context cannot hand a validation or deploy run a
  writable model store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from idp_ops.stack.engine import DockerEngine, EngineSettingsError, check_docker_host, check_tls

RUN_ENGINE_VAR = "IDP_OPS_RUN_ENGINE"
RUN_ENGINE_TLS_VERIFY_VAR = "IDP_OPS_RUN_ENGINE_TLS_VERIFY"
RUN_ENGINE_CERT_PATH_VAR = "IDP_OPS_RUN_ENGINE_CERT_PATH"
ENGINE_VARS = (RUN_ENGINE_VAR, RUN_ENGINE_TLS_VERIFY_VAR, RUN_ENGINE_CERT_PATH_VAR)
MODELS_DIR_VAR = "IDP_MODELS_DIR"
# The only jobs whose runs may write the model store (public job names: models/defs.py, backup/defs.py).
MODEL_WRITING_JOBS = frozenset({"models_job", "restore_job"})
_TRUE = {"1", "true", "yes", "on"}


class RunContextError(ValueError):
    """A location's container context that names an engine or a mount the launcher cannot use."""


def parse_env_vars(env_vars: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` entries as a dict, the later entry winning (how the launcher builds the run's env).

    A bare ``KEY`` is left out: Dagster fills it from the launcher's environment, never an engine choice here.
    """
    parsed: dict[str, str] = {}
    for entry in env_vars:
        if "=" in entry:
            key, value = entry.split("=", 1)
            parsed[key] = value
    return parsed


def run_engine(env_vars: Iterable[str]) -> DockerEngine:
    """The engine a location's runs start on, checked like a settings ``docker_host``; DockerEngine() if none."""
    env = parse_env_vars(env_vars)
    try:
        host = check_docker_host(env.get(RUN_ENGINE_VAR))
        tls_verify = env.get(RUN_ENGINE_TLS_VERIFY_VAR, "").strip().lower() in _TRUE
        cert_path = env.get(RUN_ENGINE_CERT_PATH_VAR, "").strip() or None
        if host is None and (tls_verify or cert_path):
            raise EngineSettingsError(
                f"{RUN_ENGINE_TLS_VERIFY_VAR}/{RUN_ENGINE_CERT_PATH_VAR} without {RUN_ENGINE_VAR}"
            )
        check_tls(host, tls_verify)
    except EngineSettingsError as exc:
        raise RunContextError(f"the location's run engine ({RUN_ENGINE_VAR}): {exc}") from None
    return DockerEngine(host, tls_verify, Path(cert_path) if cert_path else None)


def client_environment(engine: DockerEngine) -> dict[str, str] | None:
    """The environment docker.from_env() reads for this engine; None: the process's own (stock behaviour)."""
    if engine.host is None:
        return None
    # Only the engine's variables: nothing the daemon inherited (DOCKER_HOST, DOCKER_CONTEXT) may redirect it.
    return engine.environment({})


def run_env_vars(env_vars: Sequence[str]) -> list[str]:
    """The context's env_vars less the run-engine variables (the run container never sees the central view)."""
    return [e for e in env_vars if e.split("=", 1)[0] not in ENGINE_VARS]


def models_mode(job_name: str) -> str:
    return "rw" if job_name in MODEL_WRITING_JOBS else "ro"


def _volume_entries(volumes: Sequence[str] | Mapping[str, Mapping[str, str]] | None) -> list[str]:
    """docker-py's two forms of ``volumes`` (list of ``src:dst[:mode]`` or ``{src: {bind, mode}}``) as a list."""
    if volumes is None:
        return []
    if isinstance(volumes, Mapping):
        entries = []
        for source, spec in volumes.items():
            if not isinstance(spec, Mapping) or "bind" not in spec:
                raise RunContextError(f"container_kwargs.volumes[{source!r}] needs a 'bind' target")
            entries.append(f"{source}:{spec['bind']}:{spec.get('mode', 'rw')}")
        return entries
    return [str(v) for v in volumes]


def _target(entry: str) -> str:
    parts = entry.split(":")
    return parts[1] if len(parts) >= 2 else parts[0]


def job_volumes(
    volumes: Sequence[str] | Mapping[str, Mapping[str, str]] | None, models_dir: str | None, job_name: str
) -> list[str]:
    """The run's volumes with the models mount at the job's mode (see the module doc).

    The mount whose container path is ``models_dir`` keeps its source and gets ``ro`` or ``rw``; without one,
    a same-path mount is added (the platform's convention: host paths are container paths). No models dir
    named: the volumes as they are.
    """
    entries = _volume_entries(volumes)
    if not models_dir:
        return entries
    target = models_dir.rstrip("/") or "/"
    mode = models_mode(job_name)
    sources = [e.split(":")[0] for e in entries if _target(e).rstrip("/") == target]
    if len(set(sources)) > 1:
        raise RunContextError(f"two different mounts at the models dir {target}: {sorted(set(sources))}")
    kept = [e for e in entries if _target(e).rstrip("/") != target]
    source = sources[0] if sources else target
    return [*kept, f"{source}:{target}:{mode}"]


def job_container_kwargs(container_kwargs: Mapping, env_vars: Sequence[str], job_name: str) -> dict:
    """``container_kwargs`` for one job's run: its volumes through :func:`job_volumes`.

    The models dir comes from the context's own ``IDP_MODELS_DIR`` (what the run's settings read), so the
    mount and the settings cannot name different dirs. A ``mounts`` entry at that path is refused: it would
    bypass the mode decided here.
    """
    kwargs = dict(container_kwargs)
    models_dir = parse_env_vars(env_vars).get(MODELS_DIR_VAR)
    if models_dir:
        for mount in kwargs.get("mounts") or []:
            target = (mount.get("Target") or mount.get("target")) if isinstance(mount, Mapping) else None
            if target and target.rstrip("/") == models_dir.rstrip("/"):
                raise RunContextError(f"mount the models dir {models_dir} through 'volumes', not 'mounts'")
    if models_dir or "volumes" in kwargs:
        kwargs["volumes"] = job_volumes(kwargs.get("volumes"), models_dir, job_name)
    return kwargs
