"""Which endpoint answers when the caller names none.

An endpoint fits when its ``/health`` answers 200 within a short timeout and it serves
the model: the endpoint's configured model, or one its ``/v1/models`` lists. Among those
that fit, the faster by the last nightly figures (``bench_runs.decode_tok_s`` of the
endpoint's newest night, when that night measured the same model) goes first; endpoints
without figures follow in settings order. No history at all is settings order.

Every endpoint is checked at once, so a dead one costs the health timeout once, not once
per endpoint. Plain Python, no Dagster import.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from idp_ops.errors import IdpOpsError
from idp_ops.settings import Endpoint, Settings


class NoEndpointError(IdpOpsError, LookupError):
    """No configured endpoint can answer: the message lists each one and why it was skipped (exit 2)."""


@dataclass
class Choice:
    endpoint: Endpoint
    model: str
    # The caller named the model: llama.cpp's native API then carries it too (a router picks by it).
    model_requested: bool = False
    # Endpoint name -> why it was not chosen; empty when the caller named the endpoint.
    skipped: dict[str, str] = field(default_factory=dict)
    # Why this one: "named by the caller", "fastest by the night of ...", "settings order".
    reason: str = ""


def _transport_reason(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _served_models(client: httpx.AsyncClient, endpoint: Endpoint, key: str | None, timeout_s: float) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await client.get(f"{endpoint.url}/v1/models", headers=headers, timeout=timeout_s)
    if response.status_code != 200:
        raise _Skip(f"/v1/models answered HTTP {response.status_code}")
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError):
        raise _Skip("/v1/models answered something that is not a model list") from None
    ids = [m.get("id") for m in data or [] if isinstance(m, dict)] if isinstance(data, list) else []
    return [i for i in ids if isinstance(i, str)]


class _Skip(Exception):
    pass


async def _check(
    client: httpx.AsyncClient, settings: Settings, endpoint: Endpoint, model: str | None, timeout_s: float
) -> str | None:
    """None when the endpoint fits, else why not."""
    from idp_ops.stack.secrets import SecretsError, read_key

    try:
        health = await client.get(f"{endpoint.url}/health", timeout=timeout_s)
        if health.status_code != 200:
            return f"not healthy: /health answered HTTP {health.status_code}"
        if model is None or model == endpoint.model:
            return None
        key_file = settings.key_file(endpoint)
        try:
            key = read_key(key_file) if key_file else None
        except SecretsError as exc:
            return f"cannot list its models: {exc}"
        served = await _served_models(client, endpoint, key, timeout_s)
        if model in served:
            return None
        return f"serves {served or [endpoint.model]}, not {model!r}"
    except _Skip as exc:
        return f"serves {endpoint.model!r}, not {model!r} ({exc})"
    except httpx.TimeoutException:
        return f"no answer from {endpoint.url} within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        return f"unreachable at {endpoint.url} ({_transport_reason(exc)})"


def last_figures(history_file: Path) -> dict[str, dict]:
    """Endpoint -> its newest bench_runs row (night, model, decode_tok_s, ttft_p50_ms, ok); {} without history.

    History that cannot be read now (locked by a writer, an older file) is no history: the
    choice then falls back to settings order rather than failing the question.
    """
    import duckdb

    from idp_ops.history import database as history

    if not Path(history_file).exists():
        return {}
    try:
        with history.connect(Path(history_file), read_only=True, lock_timeout_s=2.0) as con:
            rows = con.execute(
                """SELECT endpoint, night, model, decode_tok_s, ttft_p50_ms, ok FROM bench_runs
                   QUALIFY row_number() OVER (PARTITION BY endpoint ORDER BY night DESC) = 1"""
            ).fetchall()
    except (duckdb.Error, history.HistoryError):
        return {}
    columns = ("endpoint", "night", "model", "decode_tok_s", "ttft_p50_ms", "ok")
    return {row[0]: dict(zip(columns, row, strict=True)) for row in rows}


async def choose_endpoint(
    settings: Settings,
    *,
    model: str | None = None,
    endpoint: str | None = None,
    health_timeout_s: float = 2.0,
) -> Choice:
    """The endpoint that answers: the one named, else a healthy one serving ``model``, faster first."""
    endpoints = list(settings.endpoints or [])
    if endpoint is not None:
        try:
            named = settings.endpoint(endpoint)
        except KeyError as exc:
            raise NoEndpointError(str(exc.args[0])) from None
        return Choice(named, model or named.model, model_requested=model is not None, reason="named by the caller")
    if not endpoints:
        raise NoEndpointError("no endpoints are configured (settings: endpoints)")

    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        reasons = await asyncio.gather(*(_check(client, settings, e, model, health_timeout_s) for e in endpoints))
    skipped = {e.name: reason for e, reason in zip(endpoints, reasons, strict=True) if reason is not None}
    fits = [e for e in endpoints if e.name not in skipped]
    if not fits:
        wanted = f"model {model!r}" if model else "any model"
        lines = "\n".join(f"  {name}: {reason}" for name, reason in skipped.items())
        raise NoEndpointError(f"no endpoint can answer for {wanted}:\n{lines}")

    figures = await asyncio.to_thread(last_figures, settings.history_file)

    def rate(e: Endpoint) -> float | None:
        row = figures.get(e.name)
        served = model or e.model
        # Figures of another model say nothing about this one.
        if not row or row["decode_tok_s"] is None or (row["model"] and row["model"] != served):
            return None
        return float(row["decode_tok_s"])

    order = {e.name: i for i, e in enumerate(endpoints)}
    ranked = sorted(fits, key=lambda e: (rate(e) is None, -(rate(e) or 0.0), order[e.name]))
    best = ranked[0]
    if rate(best) is not None:
        reason = f"fastest by the night of {figures[best.name]['night']} ({rate(best):.1f} tok/s decode)"
    else:
        reason = "first healthy endpoint in settings order (no nightly figures for it)"
    for other in ranked[1:]:
        other_rate = rate(other)
        skipped[other.name] = (
            f"slower by the last nightly figures ({other_rate:.1f} tok/s)"
            if other_rate is not None
            else "fits, but comes later (no nightly figures)"
        )
    return Choice(best, model or best.model, model_requested=model is not None, skipped=skipped, reason=reason)
