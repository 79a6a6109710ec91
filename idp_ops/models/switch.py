"""Switch the model a llama.cpp endpoint serves: preflight, switch, prove; roll back and prove on any failure.

    switch_model(settings, "llamacpp-cpu", "tiny-llama.gguf", progress=print) -> SwitchResult

1. Preflight (switch_preflight.py): inventory, manifest, mount, memory fit, physics ceiling vs criteria. A refusal
   recreates nothing (outcome ``refused``).
2. Switch: the choice is written atomically to ``<data_dir>/model-selection.json`` (models/selection.py), which
   settings turn into the service's model variables, so deploy and the audit keep the switched model. Only that
   service is recreated (``compose up -d --no-deps --force-recreate SERVICE``).
3. Prove: /health 200, a completion without the key refused (401), one with it answered, and the server says it
   serves the chosen file (``/props`` model_path) under the chosen name (``/v1/models`` id).
4. Any failure (health timeout, crash loop, load error, wrong model, failed proof) restores the previous selection,
   recreates the service again and proves the previous model: ``rolled_back`` (with why) or, when that also fails,
   ``rollback_failed``: the endpoint serves nothing, said loudly.

Every attempt, refused ones included, is a row of ``model_switches`` in DuckDB.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from idp_ops.models.selection import SWITCHABLE_SERVICES, read_selection, write_selection
from idp_ops.models.switch_preflight import (
    Preflight,
    SwitchInputError,
    gguf_choices,
    resolve_endpoint,
    resolve_model,
    run_preflight,
)

Progress = Callable[[str], None]

SWITCHED, ROLLED_BACK, ROLLBACK_FAILED, REFUSED = "switched", "rolled_back", "rollback_failed", "refused"
READY_TIMEOUT_S = 120.0  # a model load slower than this on its hardware counts as a failed switch
CRASH_RESTARTS = 1  # restarts of the new container that count as a crash loop (the model would not load)

__all__ = ["SwitchInputError", "SwitchResult", "switch_model", "served_model", "record_switch"]


def _quiet(_: str) -> None:
    pass


class SwitchFailed(Exception):
    """One phase of a switch (or of its rollback) failed; the message says why."""


@dataclass
class SwitchResult:
    id: str
    endpoint: str
    service: str
    from_model: str | None
    from_file: str | None
    to_model: str
    to_file: str
    outcome: str  # switched | rolled_back | rollback_failed | refused
    message: str
    started_at: str
    finished_at: str = ""
    preflight_s: float | None = None
    recreate_s: float | None = None
    prove_s: float | None = None
    rollback_s: float | None = None
    preflight: list[dict] = field(default_factory=list)
    fit: dict | None = None
    sha256: str | None = None
    served: dict | None = None  # what the endpoint serves at the end, as it reports it
    failure: str | None = None  # why the switch failed (rolled_back / rollback_failed)

    @property
    def ok(self) -> bool:
        return self.outcome == SWITCHED

    def as_dict(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        return data


# -- what the server serves ---------------------------------------------------------------


def served_model(url: str, key: str | None, *, timeout_s: float = 10) -> dict:
    """{"model_path": /props model_path, "model_id": /v1/models first id, "aliases": [...], "error": why
    asking failed}; missing parts None.

    Also what the nightly benchmark records as ``served_model`` (the id, else the path).
    """
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    out: dict[str, Any] = {"model_path": None, "model_id": None, "aliases": [], "error": None}
    with httpx.Client(timeout=timeout_s, headers=headers) as client:
        try:
            props = client.get(f"{url}/props")
            if props.status_code == 200:
                out["model_path"] = props.json().get("model_path")
            models = client.get(f"{url}/v1/models")
            if models.status_code == 200:
                data = models.json().get("data") or []
                if data:
                    out["model_id"] = data[0].get("id")
                    out["aliases"] = list(data[0].get("aliases") or [])
        except (httpx.HTTPError, ValueError) as exc:  # unknown, and why: the proof says "wrong model" with it
            out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def served_model_name(url: str, key: str | None) -> str | None:
    served = served_model(url, key)
    return served["model_id"] or served["model_path"]


# -- recreate, wait, prove ----------------------------------------------------------------


def _container_state(project, container: str) -> dict:
    # Through the project: the switched service lives on the location's own engine.
    result = project.docker("inspect", "--format", "{{json .State}}|{{.RestartCount}}", container)
    if result.returncode != 0:
        return {"Status": "gone", "RestartCount": 0}
    state_json, _, restarts = result.stdout.strip().rpartition("|")
    state = json.loads(state_json or "{}")
    state["RestartCount"] = int(restarts or 0)
    return state


def _wait_ready(project, service: str, url: str, timeout_s: float) -> None:
    """/health 200 from a fresh container of ``service``; a crash or restart fails at once, with its log."""
    deadline = time.monotonic() + timeout_s
    containers = [s.container for s in project.ps([service])]
    if not containers:
        raise SwitchFailed(f"compose created no container for {service}")
    delay, last = 0.1, "no answer"
    with httpx.Client(timeout=5) as client:
        while True:
            state = _container_state(project, containers[0])
            if state.get("RestartCount", 0) >= CRASH_RESTARTS or state.get("Status") in ("exited", "dead", "gone"):
                log = project.logs(service, tail=15).strip().splitlines()
                reason = next((line for line in reversed(log) if "error" in line.lower()), log[-1] if log else "")
                raise SwitchFailed(
                    f"{service} crashed while loading (status {state.get('Status')}, exit {state.get('ExitCode')}, "
                    f"restarts {state.get('RestartCount')}): {reason.strip()[:300]}"
                )
            try:
                response = client.get(f"{url}/health")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                last = type(exc).__name__
            if time.monotonic() + delay > deadline:
                raise SwitchFailed(f"{url}/health not ready after {timeout_s:.0f} s (last: {last})")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)  # a model is often ready within a second: poll finely


def _prove(endpoint, url: str, key: str | None, expect_path: str, expect_name: str) -> dict:
    """Health, 401 without key, a completion with it, and the served path and name: the served dict."""
    from idp_ops.stack.probe import ProbeError, probe_endpoint

    try:
        probe = probe_endpoint(endpoint.name, url, endpoint.protocol, expect_name, key)
    except ProbeError as exc:
        raise SwitchFailed(str(exc)) from None
    if not probe.ok:
        raise SwitchFailed("proof failed: " + "; ".join(probe.problems))
    served = served_model(url, key)
    names = {served["model_id"], *served["aliases"]}
    if served["model_path"] != expect_path:
        asked = f" (asking failed: {served['error']})" if served["error"] else ""
        raise SwitchFailed(
            f"wrong model served: /props model_path {served['model_path']!r}, expected {expect_path!r}{asked}"
        )
    if expect_name not in names:
        raise SwitchFailed(
            f"wrong model name served: /v1/models {sorted(n for n in names if n)}, expected {expect_name!r}"
        )
    served["completion_ms"] = probe.completion_ms
    served["unauthenticated_status"] = probe.unauthenticated_status
    return served


def _project(settings, service: str, entry: dict | None):
    """A compose project whose environment serves ``entry`` on ``service`` (None: the settings' own)."""
    from idp_ops.stack.deploy import compose_project

    project = compose_project(settings)
    variables = SWITCHABLE_SERVICES[service]
    if entry is not None:
        project.environment[variables[0]] = entry["container_path"]
        project.environment[variables[1]] = entry["model"]
    return project


def _recreate_and_prove(
    settings, endpoint, entry: dict, key: str | None, timeout_s: float
) -> tuple[float, float, dict]:
    service = endpoint.compose_service
    project = _project(settings, service, entry)
    started = time.monotonic()
    try:
        project.up([service], wait=False, force_recreate=True, timeout=timeout_s)
        _wait_ready(project, service, endpoint.url, timeout_s)
    except SwitchFailed:
        raise
    except Exception as exc:  # compose errors and the like: a failed switch, rolled back like any other
        raise SwitchFailed(f"recreating {service} failed: {exc}") from None
    recreate_s = time.monotonic() - started
    started = time.monotonic()
    served = _prove(endpoint, endpoint.url, key, entry["container_path"], entry["model"])
    return recreate_s, time.monotonic() - started, served


# -- the switch -------------------------------------------------------------------------


def _alias(model_rel: str, base: dict) -> str:
    """The served name: the configured one for the configured file, else the file name without .gguf."""
    if model_rel == base.get("model_file") and base.get("model"):
        return base["model"]
    return Path(model_rel).stem


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def switch_model(
    settings,
    endpoint_name: str,
    model_name: str,
    *,
    progress: Progress = _quiet,
    ready_timeout_s: float = READY_TIMEOUT_S,
    nvml: Any = None,
) -> SwitchResult:
    """Switch, prove, or roll back and prove; record the attempt. Raises SwitchInputError for unknown names."""
    from idp_ops.stack.secrets import read_key

    endpoint = resolve_endpoint(settings, endpoint_name)
    rows = gguf_choices(settings.models_dir)
    model = resolve_model(rows, model_name)
    service = endpoint.compose_service
    selections = read_selection(settings.data_dir)
    previous_entry = selections.get(service)
    applied = previous_entry if previous_entry and previous_entry.get("model_file") == endpoint.model_file else None
    base = (applied or {}).get("base") or {"model": endpoint.model, "model_file": endpoint.model_file}
    current = next((r for r in rows if r.relpath == endpoint.model_file), None)

    result = SwitchResult(
        id=uuid.uuid4().hex[:12], endpoint=endpoint.name, service=service, from_model=endpoint.model,
        from_file=endpoint.model_file, to_model=_alias(model.relpath, base), to_file=model.relpath,
        outcome=REFUSED, message="", started_at=_now(),
    )  # fmt: skip
    t0 = time.monotonic()
    progress(f"preflight: {endpoint.name} ({service}) {endpoint.model_file} -> {model.relpath}")
    pre: Preflight = run_preflight(settings, endpoint, model, current, nvml=nvml)
    result.preflight_s = round(time.monotonic() - t0, 3)
    result.preflight, result.fit, result.sha256 = pre.table(), pre.fit, pre.sha256
    for check in pre.checks:
        progress(f"  {check.check}: {check.status}: {check.detail}")
    try:
        # Where the running service finds its model now: what a rollback restores.
        old_path = _previous_path(settings, endpoint)
    except SwitchFailed as exc:
        pre.add("rollback target", "refused", str(exc))
        result.preflight = pre.table()
    if pre.refused:
        result.message = "refused in preflight: " + "; ".join(f"{c.check}: {c.detail}" for c in pre.refused)
        return _finish(settings, result, progress)

    key_file = settings.key_file(endpoint)
    key = read_key(key_file) if key_file else None
    new_entry = {
        "endpoint": endpoint.name,
        "model_file": model.relpath,
        "model": result.to_model,
        "container_path": pre.container_path,
        "base": base,
        "switched_at": _now(),
        "sha256": pre.sha256,
    }
    # The previous model as an explicit entry, so the rollback serves exactly what ran before.
    old_entry = {**new_entry, "model_file": endpoint.model_file, "model": endpoint.model, "container_path": old_path}

    write_selection(settings.data_dir, {**selections, service: new_entry})
    progress(f"switch: selection written; recreating {service} with {pre.container_path}")
    try:
        recreate_s, prove_s, served = _recreate_and_prove(settings, endpoint, new_entry, key, ready_timeout_s)
        result.recreate_s, result.prove_s, result.served = round(recreate_s, 3), round(prove_s, 3), served
        result.outcome = SWITCHED
        result.message = f"{endpoint.name} serves {model.relpath} as {result.to_model} (proven)"
        return _finish(settings, result, progress)
    except SwitchFailed as exc:
        result.failure = str(exc)
        progress(f"switch failed: {exc}; rolling back to {endpoint.model_file}")

    # Roll back: the previous selection exactly as it was, then the same proof for the previous model.
    t1 = time.monotonic()
    if previous_entry is None:
        rest = {k: v for k, v in selections.items() if k != service}
        write_selection(settings.data_dir, rest)
    else:
        write_selection(settings.data_dir, selections)
    try:
        _, _, served = _recreate_and_prove(settings, endpoint, old_entry, key, ready_timeout_s)
        result.served = served
        result.outcome = ROLLED_BACK
        result.message = f"rolled back to {endpoint.model_file} (proven): {result.failure}"
    except SwitchFailed as exc:
        result.outcome = ROLLBACK_FAILED
        result.message = (
            f"ROLLBACK FAILED: {endpoint.name} is serving nothing. The switch to {model.relpath} failed "
            f"({result.failure}) and restoring {endpoint.model_file} failed too ({exc}). "
            f"Run `idp-ops deploy` or `idp-ops models switch {endpoint.name} MODEL` once the cause is fixed."
        )
    result.rollback_s = round(time.monotonic() - t1, 3)
    return _finish(settings, result, progress)


def _previous_path(settings, endpoint) -> str:
    """Where the running service finds its current model (what compose resolves today)."""
    from idp_ops.models.switch_preflight import compose_service

    command = compose_service(settings, endpoint.compose_service).get("command") or []
    command = [str(c) for c in command]
    if "--model" in command and command.index("--model") + 1 < len(command):
        return command[command.index("--model") + 1]
    raise SwitchFailed(f"service {endpoint.compose_service} has no --model argument to switch")


def _finish(settings, result: SwitchResult, progress: Progress) -> SwitchResult:
    result.finished_at = _now()
    try:
        record_switch(settings.history_file, result)
    except Exception as exc:  # the switch happened either way; say the record is missing, do not hide the outcome
        result.message += f" (not recorded in history: {exc})"
    progress(f"{result.outcome}: {result.message}")
    return result


def record_switch(history_file: Path, result: SwitchResult) -> None:
    from idp_ops.history import database as history

    with history.connect(history_file) as con:
        history.insert_rows(
            con,
            "model_switches",
            [
                {
                    "id": result.id,
                    "endpoint": result.endpoint,
                    "service": result.service,
                    "from_model": result.from_file,
                    "to_model": result.to_file,
                    "started_at": result.started_at,
                    "finished_at": result.finished_at,
                    "preflight_s": result.preflight_s,
                    "recreate_s": result.recreate_s,
                    "prove_s": result.prove_s,
                    "rollback_s": result.rollback_s,
                    "outcome": result.outcome,
                    "message": result.message,
                    "preflight": json.dumps(result.preflight),
                }
            ],
        )
