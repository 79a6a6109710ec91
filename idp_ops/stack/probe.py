"""Prove an inference endpoint is up and guarded: health, auth rejected, auth accepted.

Speaks both protocols the box serves: OpenAI-compatible ``/v1/completions``
(vLLM, llama-server) and llama.cpp's native ``/completion``. The key is sent as
a Bearer header and never appears in results or error messages.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import httpx

from idp_ops.errors import IdpOpsError

# llama-server answers 503 while loading the model; vLLM refuses connections until ready.
_NOT_READY_STATUSES = {502, 503, 504}


class ProbeError(IdpOpsError, RuntimeError):
    pass


@dataclass
class ProbeResult:
    endpoint: str
    url: str
    health_status: int
    health_ms: float
    unauthenticated_status: int | None
    authenticated_status: int
    completion_ms: float
    completion_chars: int
    rejects_without_key: bool
    ok: bool
    problems: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


def completion_request(protocol: str, model: str, prompt: str, max_tokens: int) -> tuple[str, dict]:
    if protocol == "openai":
        return "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    if protocol == "llamacpp":
        return "/completion", {"prompt": prompt, "n_predict": max_tokens, "temperature": 0, "cache_prompt": False}
    raise ValueError(f"unknown protocol {protocol!r}")


def completion_text(protocol: str, body: dict) -> str:
    if protocol == "openai":
        choices = body.get("choices") or []
        return (choices[0].get("text") or "") if choices else ""
    return body.get("content") or ""


def wait_until_ready(url: str, *, timeout_s: float = 120, client: httpx.Client | None = None) -> float:
    """Poll ``/health`` with backoff until 200; returns seconds waited. Raises ProbeError on timeout."""
    own = client is None
    client = client or httpx.Client(timeout=5)
    start = time.monotonic()
    delay = 0.25
    last = "no answer"
    try:
        while True:
            try:
                response = client.get(f"{url}/health")
                if response.status_code == 200:
                    return time.monotonic() - start
                last = f"HTTP {response.status_code}"
                if response.status_code not in _NOT_READY_STATUSES:
                    raise ProbeError(f"{url}/health answered {last}: {response.text[:200]}")
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if time.monotonic() - start + delay > timeout_s:
                raise ProbeError(f"{url} not ready after {timeout_s:.0f} s (last: {last})")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    finally:
        if own:
            client.close()


def unauthenticated_status(url: str, protocol: str, model: str, *, timeout_s: float = 30) -> int | None:
    """Status of a one-token completion sent without a key; None if the endpoint is unreachable."""
    path, payload = completion_request(protocol, model, "auth probe", 1)
    try:
        return httpx.post(url + path, json=payload, timeout=timeout_s).status_code
    except httpx.TransportError:
        return None


def probe_endpoint(
    name: str,
    url: str,
    protocol: str,
    model: str,
    key: str | None,
    *,
    timeout_s: float = 60,
    prompt: str = "The capital of France is",
) -> ProbeResult:
    """Health 200, a completion without the key rejected (401/403), one with it answered with text."""
    problems: list[str] = []
    path, payload = completion_request(protocol, model, prompt, max_tokens=8)
    with httpx.Client(timeout=timeout_s) as client:
        try:
            started = time.monotonic()
            health = client.get(f"{url}/health")
            health_ms = (time.monotonic() - started) * 1000
        except httpx.TransportError as exc:
            raise ProbeError(f"{name}: {url} is unreachable ({type(exc).__name__}: {exc})") from None
        if health.status_code != 200:
            problems.append(f"/health answered {health.status_code}, expected 200")

        unauthenticated_status = None
        rejects = False
        if key:
            unauthenticated = client.post(f"{url}{path}", json=payload)
            unauthenticated_status = unauthenticated.status_code
            rejects = unauthenticated_status in (401, 403)
            if not rejects:
                problems.append(
                    f"a completion without the key answered {unauthenticated_status}, expected 401: "
                    "the endpoint is open to anyone who can reach it"
                )
        else:
            problems.append("no key configured for this endpoint: it cannot be proven to reject strangers")

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        started = time.monotonic()
        authenticated = client.post(f"{url}{path}", json=payload, headers=headers)
        completion_ms = (time.monotonic() - started) * 1000
        text = ""
        if authenticated.status_code == 200:
            try:
                text = completion_text(protocol, authenticated.json())
            except ValueError:
                problems.append("authenticated completion returned a body that is not JSON")
            if not text:
                problems.append("authenticated completion returned no text")
        else:
            problems.append(f"authenticated completion answered {authenticated.status_code}, expected 200")

    return ProbeResult(
        endpoint=name,
        url=url,
        health_status=health.status_code,
        health_ms=round(health_ms, 2),
        unauthenticated_status=unauthenticated_status,
        authenticated_status=authenticated.status_code,
        completion_ms=round(completion_ms, 2),
        completion_chars=len(text),
        rejects_without_key=rejects,
        ok=not problems,
        problems=problems,
    )
