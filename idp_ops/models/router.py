"""Many GGUFs behind one llama.cpp endpoint: llama-server's router mode.

The router (``llama-server --models-preset FILE --models-max N``, no ``--model``) runs one
child llama-server per loaded model and forwards each request by its ``model`` field
(POST bodies; ``?model=`` on GET routes). Its own API, checked against build b11434:

* ``GET /models``: every model it knows, ``status.value`` unloaded / loading / loaded
  (``failed`` and ``exit_code`` after a child that died); ``?reload=1`` rereads the preset.
* ``POST /models/load`` ``{"model": id}``: starts loading, answers ``{"success": true}`` at once
  (404 for an unknown id); the status turns ``loaded`` when the child serves.
* ``POST /models/unload`` ``{"model": id}``: stops that child (400 "model is not running" if none).
* A request for an unloaded model loads it first (``--models-autoload``, the default) and waits;
  more than ``--models-max`` loaded evicts the least recently used one.

Every route, ``/models`` included, needs the key (``--api-key-file``); ``/health`` does not.

This module: the preset written from the GGUF headers (the same reader as the inventory), models_max
from the memory budget, the compose variables of the router service, and a small client (list,
load, unload, load timing). No Dagster here; validation/defs.py and the stack use it.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import httpx

from idp_ops.errors import IdpOpsError
from idp_ops.fsutil import atomic_write_text
from idp_ops.models.gguf_meta import KIND_GGUF, ModelFile, ModelScanError, scan_models

if TYPE_CHECKING:
    import duckdb

    from idp_ops.settings import Endpoint, RouterOptions, Settings

ROUTER_SERVICE = "llamacpp-router"
ROUTER_PROFILE = "router"
# Inside the container: where compose mounts models_dir and the presets dir.
CONTAINER_MODELS_DIR = "/models"
MIB = 1024 * 1024
GIB = 1024 * MIB


class RouterError(IdpOpsError, RuntimeError):
    """The router cannot be configured, or it answered something other than what was asked."""


# -- what the router serves ------------------------------------------------------


@dataclass(frozen=True)
class RouterEntry:
    """One served model: its id, file, context and threads, and what it needs in memory loaded."""

    name: str
    relpath: str  # relative to models_dir
    size: int
    ctx_size: int
    threads: int | None
    kv_bytes_per_token: int | None

    @property
    def kv_cache_bytes(self) -> int | None:
        return self.kv_bytes_per_token * self.ctx_size if self.kv_bytes_per_token else None

    def need_bytes(self, overhead_bytes: int) -> int:
        # Weights are mmapped and all touched on the first token: the whole file is resident.
        # The KV cache is allocated for the whole context at load (f16, every layer full-attention:
        # an upper bound for sliding-window models). Unknown KV: the file size counts twice.
        kv = self.kv_cache_bytes if self.kv_cache_bytes is not None else self.size
        return self.size + kv + overhead_bytes


@dataclass
class RouterPlan:
    endpoint: str
    entries: list[RouterEntry]
    budget_bytes: int
    largest_need_bytes: int
    models_max: int
    derived: bool
    preset_file: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def explain(self) -> str:
        how = (
            f"budget {self.budget_bytes / MIB:.0f} MiB // largest need {self.largest_need_bytes / MIB:.0f} MiB "
            f"(weights + KV at its context + overhead) = {self.models_max}"
            if self.derived
            else f"{self.models_max} (set in settings)"
        )
        return f"{len(self.entries)} model(s); models_max {how}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["explain"] = self.explain()
        return data


def _model_name(relpath: str) -> str:
    stem = PurePosixPath(relpath).name
    return stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem


def served_entries(models_dir: Path, options: RouterOptions) -> list[RouterEntry]:
    """The router's models: GGUFs under models_subdir matching ``include``, plus ``models`` (by file).

    Headers are read with the inventory's reader (gguf_meta), so the KV cache per token is exact.
    """
    models_dir = Path(models_dir)
    root = (models_dir / options.models_subdir).resolve()
    try:
        scanned = scan_models(root)
    except ModelScanError as exc:
        raise RouterError(f"router models: {exc}") from None
    by_relpath: dict[str, ModelFile] = {}
    for row in scanned:
        if row.kind != KIND_GGUF or row.finding:
            continue
        relpath = str(PurePosixPath(Path(row.path).resolve().relative_to(models_dir.resolve())))
        name = PurePosixPath(relpath).name
        # A multimodal projector is not a model of its own.
        if name.lower().startswith("mmproj"):
            continue
        inner = str(PurePosixPath(Path(row.path).resolve().relative_to(root)))
        if any(fnmatch.fnmatch(inner, pattern) or fnmatch.fnmatch(name, pattern) for pattern in options.include):
            by_relpath[relpath] = row
    overrides = {str(PurePosixPath(m.file)): m for m in options.models}
    for relpath in overrides:
        if relpath in by_relpath:
            continue
        path = models_dir / relpath
        if not path.is_file():
            raise RouterError(f"router model {relpath!r} is not a file under {models_dir}")
        from idp_ops.models.gguf_meta import read_gguf

        row = read_gguf(path, models_dir)
        if row.finding:
            raise RouterError(f"router model {relpath!r} cannot be served: {row.finding}")
        by_relpath[relpath] = row
    entries = []
    for relpath, row in sorted(by_relpath.items()):
        override = overrides.get(relpath)
        entries.append(
            RouterEntry(
                name=(override.name if override and override.name else _model_name(relpath)),
                relpath=relpath,
                size=row.size,
                ctx_size=(override.ctx_size if override and override.ctx_size else options.ctx_size),
                threads=(override.threads if override and override.threads else options.threads),
                kv_bytes_per_token=row.kv_cache_bytes_per_token(),
            )
        )
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RouterError(f"router model names {duplicates} are served twice: give them names in router.models")
    if not entries:
        raise RouterError(f"router: no GGUF under {root} matches {options.include}")
    return entries


def budget_bytes(options: RouterOptions) -> int:
    if options.budget_gb is not None:
        return int(options.budget_gb * GIB)
    return int(options.memory_limit_gb * GIB * options.memory_share)


def derive_models_max(entries: list[RouterEntry], budget: int, overhead_bytes: int) -> tuple[int, int]:
    """(models_max, largest need): how many of the largest model fit the budget at once, at least 1.

    Sized by the largest so any mix the LRU eviction leaves loaded fits; never more than there are
    models (and never 0, which llama-server reads as unlimited).
    """
    if not entries:
        raise RouterError("no models to size models_max for")
    largest = max(e.need_bytes(overhead_bytes) for e in entries)
    return max(1, min(len(entries), budget // largest)), largest


def plan_router(settings: Settings, endpoint: Endpoint) -> RouterPlan:
    options = endpoint.router
    if options is None:
        raise RouterError(f"endpoint {endpoint.name} is not a router endpoint")
    entries = served_entries(settings.models_dir, options)
    overhead = int(options.overhead_mb * MIB)
    budget = budget_bytes(options)
    derived_max, largest = derive_models_max(entries, budget, overhead)
    notes = []
    if largest > budget:
        notes.append(
            f"the largest model needs {largest / MIB:.0f} MiB, more than the budget {budget / MIB:.0f} MiB: "
            "it may not load"
        )
    names = [e.name for e in entries]
    if endpoint.model not in names:
        raise RouterError(
            f"endpoint {endpoint.name}: model {endpoint.model!r} (probed on deploy) is not served; served: {names}"
        )
    for name in options.benchmark_models or []:
        if name not in names:
            raise RouterError(f"endpoint {endpoint.name}: router.benchmark_models names {name!r}; served: {names}")
    return RouterPlan(
        endpoint=endpoint.name,
        entries=entries,
        budget_bytes=budget,
        largest_need_bytes=largest,
        models_max=options.models_max or derived_max,
        derived=options.models_max is None,
        preset_file=str(preset_file(settings)),
        notes=notes,
    )


def render_preset(entries: list[RouterEntry], options: RouterOptions) -> str:
    """The router's INI preset: one section per model (its id), keys as llama-server's long flags.

    Per-model values live only here: a flag on the router's command line would override them all.
    """
    lines = [
        "version = 1",
        "; Written by idp-ops from the GGUF headers on every deploy: edits here are overwritten.",
        "; Change router settings on the endpoint (router: ...) instead.",
        "",
        "[*]",
        f"parallel = {options.parallel}",
        "",
    ]
    for entry in entries:
        lines.append(f"[{entry.name}]")
        lines.append(f"model = {CONTAINER_MODELS_DIR}/{entry.relpath}")
        lines.append(f"ctx-size = {entry.ctx_size}")
        if entry.threads:
            lines.append(f"threads = {entry.threads}")
        lines.append("")
    return "\n".join(lines)


def router_endpoints(settings: Settings) -> list[Endpoint]:
    routers = [e for e in settings.endpoints or [] if e.router is not None]
    if len(routers) > 1:
        raise RouterError(
            f"only one router endpoint per compose file (service {ROUTER_SERVICE}); configured: "
            f"{[e.name for e in routers]}"
        )
    for endpoint in routers:
        if endpoint.compose_service not in (None, ROUTER_SERVICE):
            raise RouterError(
                f"endpoint {endpoint.name}: a router endpoint runs as compose service {ROUTER_SERVICE!r}, "
                f"not {endpoint.compose_service!r}"
            )
    return routers


def presets_dir(settings: Settings) -> Path:
    return settings.data_dir / "router"


def preset_file(settings: Settings) -> Path:
    return presets_dir(settings) / f"{ROUTER_SERVICE}.ini"


def write_router_presets(settings: Settings, *, log: Callable[[str], None] | None = None) -> list[RouterPlan]:
    """Write the preset of the configured router endpoint (atomically); [] when there is none.

    The presets directory is mounted (not the file): an atomic rename is seen inside the container,
    and ``GET /models?reload=1`` rereads it without a restart.
    """
    plans = []
    for endpoint in router_endpoints(settings):
        plan = plan_router(settings, endpoint)
        path = preset_file(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)  # the service's uid reads it; it holds no secret
        atomic_write_text(path, render_preset(plan.entries, endpoint.router), mode=0o644)
        if log:
            log(f"{endpoint.name}: router preset {path}: {plan.explain()}")
            for note in plan.notes:
                log(f"{endpoint.name}: {note}")
        plans.append(plan)
    return plans


def router_compose_environment(settings: Settings) -> dict[str, str]:
    """Variables of the router service in the compose files (defaults there when no router is set).

    Never raises: compose_environment() runs for every compose call and the audit; a router that
    cannot be planned is reported by the deploy (write_router_presets), not here.
    """
    env = {"IDP_ROUTER_PRESETS_DIR": str(presets_dir(settings))}
    try:
        routers = router_endpoints(settings)
    except RouterError:
        return env
    for endpoint in routers:
        options = endpoint.router
        env["IDP_ROUTER_PORT"] = str(endpoint.port)
        env["IDP_ROUTER_MEMORY"] = f"{int(options.memory_limit_gb * 1024)}m"
        env["IDP_ROUTER_CPUS"] = f"{options.cpus:g}"
        models_max = options.models_max
        if models_max is None:
            try:
                models_max = plan_router(settings, endpoint).models_max
            except (RouterError, OSError):
                models_max = 1  # the deploy reports why; one model at a time is always safe
        env["IDP_ROUTER_MODELS_MAX"] = str(models_max)
    return env


# -- the router's API --------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    name: str
    status: str  # unloaded, loading, loaded, sleeping, downloading
    failed: bool = False
    exit_code: int | None = None
    args: tuple[str, ...] = ()


class RouterClient:
    """The router's model management API, with the key; every call bounded by ``timeout_s``."""

    def __init__(self, url: str, key: str | None, *, timeout_s: float = 30.0, poll_s: float = 0.025):
        self.url = url.rstrip("/")
        self.poll_s = poll_s
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get_models(self, params: dict | None = None) -> list[ServedModel]:
        response = self._client.get(f"{self.url}/models", params=params)
        if response.status_code in (401, 403):
            raise RouterError(f"{self.url}/models refused the key (HTTP {response.status_code})")
        if response.status_code != 200:
            raise RouterError(f"{self.url}/models answered {response.status_code}: {response.text[:200]}")
        try:
            data = response.json().get("data")
        except ValueError:
            data = None
        if not isinstance(data, list):
            raise RouterError(f"{self.url}/models is not a router's model list (is the server in router mode?)")
        models = []
        for item in data:
            status = item.get("status") or {}
            models.append(
                ServedModel(
                    name=str(item.get("id")),
                    status=str(status.get("value", "unknown")),
                    failed=bool(status.get("failed")),
                    exit_code=status.get("exit_code"),
                    args=tuple(status.get("args") or ()),
                )
            )
        return models

    def models(self) -> list[ServedModel]:
        return self._get_models()

    def reload(self) -> list[ServedModel]:
        """Reread the preset (a running model whose entry changed is unloaded)."""
        return self._get_models({"reload": "1"})

    def status(self, name: str) -> ServedModel:
        for model in self.models():
            if model.name == name:
                return model
        raise RouterError(f"the router does not serve {name!r}")

    def _post(self, verb: str, name: str) -> httpx.Response:
        return self._client.post(f"{self.url}/models/{verb}", json={"model": name})

    def load(self, name: str, *, timeout_s: float = 300.0) -> float:
        """Load ``name`` and wait until it serves; returns the seconds from the request to ``loaded``.

        Polled every ``poll_s`` (25 ms): the figure is at most that late.
        """
        started = time.perf_counter()
        response = self._post("load", name)
        if response.status_code == 404:
            raise RouterError(f"the router does not serve {name!r}")
        if response.status_code != 200 and "already" not in response.text.lower():
            raise RouterError(f"loading {name!r} answered {response.status_code}: {response.text[:200]}")
        return self._wait_for(name, "loaded", started, timeout_s)

    def unload(self, name: str, *, timeout_s: float = 60.0) -> float:
        """Unload ``name`` (already unloaded is fine); returns the seconds until the router says so."""
        started = time.perf_counter()
        response = self._post("unload", name)
        if response.status_code not in (200, 400):
            raise RouterError(f"unloading {name!r} answered {response.status_code}: {response.text[:200]}")
        return self._wait_for(name, "unloaded", started, timeout_s)

    def unload_all(self, *, timeout_s: float = 60.0) -> list[str]:
        loaded = [m.name for m in self.models() if m.status in ("loaded", "loading", "sleeping")]
        for name in loaded:
            self.unload(name, timeout_s=timeout_s)
        return loaded

    def _wait_for(self, name: str, wanted: str, started: float, timeout_s: float) -> float:
        deadline = started + timeout_s
        while True:
            model = self.status(name)
            if model.status == wanted:
                return time.perf_counter() - started
            if wanted == "loaded" and model.failed:
                raise RouterError(f"{name!r} failed to load (exit code {model.exit_code}): see the router's log")
            if time.perf_counter() > deadline:
                raise RouterError(f"{name!r} not {wanted} after {timeout_s:.0f} s (status {model.status})")
            time.sleep(self.poll_s)


def prove_router_listing(
    settings: Settings, plans: list[RouterPlan], *, log: Callable[[str], None] | None = None
) -> list[str]:
    """After a deploy: the router lists exactly the planned models (rereading the preset first, since
    a running router keeps the one it started with). Returns problems, one line each."""
    from idp_ops.stack.secrets import read_key

    problems = []
    for plan in plans:
        endpoint = settings.endpoint(plan.endpoint)
        key_file = settings.key_file(endpoint)
        try:
            with RouterClient(endpoint.url, read_key(key_file) if key_file else None) as client:
                listed = sorted(m.name for m in client.reload())
        except (RouterError, httpx.HTTPError) as exc:
            problems.append(f"{endpoint.name}: router model list unavailable: {exc}")
            continue
        if listed != sorted(plan.names):
            problems.append(f"{endpoint.name}: router lists {listed}, the preset has {sorted(plan.names)}")
        elif log:
            log(f"{endpoint.name}: router lists {len(listed)} model(s): {', '.join(listed)}")
    return problems


# -- load timing for validation ----------------------------------------------------


@dataclass
class RouterLoad:
    """One model's load, timed apart from any request: unloaded first, then an explicit load."""

    endpoint: str
    model: str
    started_at: datetime
    unload_s: float | None
    load_s: float | None
    models_max: int | None
    method: str = "explicit"  # POST /models/load, polled until loaded
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.load_s is not None

    @property
    def label(self) -> str:
        """The name its benchmark is recorded under (see model_endpoint)."""
        return model_label(self.endpoint, self.model)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_load(client: RouterClient, endpoint: str, model: str, *, timeout_s: float = 300.0) -> RouterLoad:
    """Unload ``model`` (so the load is a cold one), then load it and time it. Never raises RouterError:
    a model that does not load is a row with its error, and the other models are still measured."""
    started_at = datetime.now(UTC)
    unload_s = load_s = None
    try:
        unload_s = client.unload(model)
        load_s = client.load(model, timeout_s=timeout_s)
        error = None
    except (RouterError, httpx.HTTPError) as exc:
        error = f"{type(exc).__name__}: {exc}" if isinstance(exc, httpx.HTTPError) else str(exc)
    return RouterLoad(
        endpoint=endpoint,
        model=model,
        started_at=started_at,
        unload_s=round(unload_s, 4) if unload_s is not None else None,
        load_s=round(load_s, 4) if load_s is not None else None,
        models_max=None,
        error=error,
    )


def benchmark_models(endpoint: Endpoint, served: list[str]) -> list[str]:
    """The served models validation benchmarks: router.benchmark_models, else all of them."""
    wanted = endpoint.router.benchmark_models if endpoint.router else None
    if not wanted:
        return list(served)
    missing = [name for name in wanted if name not in served]
    if missing:
        raise RouterError(f"{endpoint.name}: router.benchmark_models {missing} are not served; served: {served}")
    return list(wanted)


def model_label(endpoint: str, model: str) -> str:
    return f"{endpoint}/{model}"


def model_endpoint(endpoint: Endpoint, entry: RouterEntry) -> Endpoint:
    """The endpoint as one of its models: its own series in history (``endpoint/model``), its own ceiling."""
    return endpoint.model_copy(
        update={
            "name": model_label(endpoint.name, entry.name),
            "model": entry.name,
            "model_file": entry.relpath,
            "weights_gb": None,
            "cpu_threads": entry.threads or endpoint.cpu_threads,
        }
    )


def record_router_loads(con: duckdb.DuckDBPyConnection, night: date, loads: list[RouterLoad]) -> int:
    """Replace this night's rows for each (endpoint, model): re-running a night never duplicates."""
    from idp_ops.history import database as history

    con.execute("BEGIN TRANSACTION")
    try:
        for load in loads:
            con.execute(
                "DELETE FROM router_loads WHERE night = ? AND endpoint = ? AND model = ?",
                [night, load.endpoint, load.model],
            )
        history.insert_rows(
            con,
            "router_loads",
            [
                {
                    "night": night,
                    "endpoint": load.endpoint,
                    "model": load.model,
                    "started_at": load.started_at,
                    "unload_s": load.unload_s,
                    "load_s": load.load_s,
                    "method": load.method,
                    "models_max": load.models_max,
                    "status": "loaded" if load.ok else "failed",
                    "error": load.error,
                }
                for load in loads
            ],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return len(loads)
