"""Async streaming benchmark client for the box's inference endpoints.

Speaks OpenAI-compatible ``/v1/completions`` (vLLM, llama-server) and llama.cpp's
native ``/completion``, always streamed, and measures what serving benchmarks
measure (vLLM's ``benchmark_serving``, llama.cpp's server bench):

* the clock starts just before the request is sent;
* TTFT at the first SSE event that carries non-empty text;
* ITL between consecutive content events;
* E2E at the last content event;
* TPOT = (E2E - TTFT) / (output tokens - 1);
* output tokens come from the server (``usage.completion_tokens``, llama.cpp
  ``timings.predicted_n`` / ``tokens_predicted``), never from counting events: one
  event may carry several tokens, or none.

Every request asks for a fixed output length (``max_tokens`` + ``ignore_eos`` on
the OpenAI API, ``n_predict`` + ``ignore_eos`` natively) and starts with a prompt
nobody has sent before (plus ``cache_prompt: false`` where llama-server reads it),
so neither an early EOS nor a prefix cache can flatter the figures.

SSE is parsed with ``httpx-sse`` (buffers to blank lines, skips ``:`` comments
and pings); on top of that we skip ``[DONE]``, role-only and usage-only chunks.

Plain Python, no Dagster import: the CLI, the assets and the tests all call
:func:`run_benchmark` / :func:`run_benchmark_sync`.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from idp_ops.errors import IdpOpsError
from idp_ops.validation.arrivals import ARRIVALS, arrival_gap_s
from idp_ops.validation.arrivals import resolve_arrival as _resolve_arrival
from idp_ops.validation.bench_results import BenchReport, RequestSample, ScenarioResult
from idp_ops.validation.bench_stats import PERCENTILE_METRICS, percentiles, sample_percentiles, summary_lines
from idp_ops.validation.bench_stats import median_or_none as _median

# Result types live in bench_results.py, statistics and the summary in bench_stats.py; they stay importable here.
__all__ = [
    "ARRIVALS",
    "PERCENTILE_METRICS",
    "BenchError",
    "BenchReport",
    "RequestSample",
    "ScenarioResult",
    "build_request",
    "discover_model",
    "make_prompt",
    "percentiles",
    "resolve_arrival",
    "run_benchmark",
    "run_benchmark_sync",
    "sample_percentiles",
    "stream_request",
    "summary_lines",
    "wait_ready",
]

Progress = Callable[[str], None]

# llama-server answers 503 while it loads the model; proxies in front answer 502/504.
NOT_READY_STATUSES = frozenset({502, 503, 504})

# Different subjects so prompts differ in their text, not only in the nonce.
_SUBJECTS = (
    "the water cycle",
    "how a bicycle gear works",
    "why the sky is blue",
    "the history of the printing press",
    "how vaccines train the immune system",
    "what a compiler does",
    "how bees communicate",
    "the causes of ocean tides",
    "how a refrigerator moves heat",
    "what makes bread rise",
)


class BenchError(IdpOpsError, RuntimeError):
    """The benchmark cannot measure anything: not ready, key rejected, bad arguments."""


# -- requests ----------------------------------------------------------------


def make_prompt(nonce: str, index: int, words: int = 0) -> str:
    """A prompt that starts with text no earlier request had, so no prefix cache can serve it."""
    subject = _SUBJECTS[index % len(_SUBJECTS)]
    padding = " ".join(["Please be thorough and precise."] * max(0, words // 5))
    return f"Request {nonce}-{index}. {padding} Write a short explanation of {subject}:".replace("  ", " ")


def build_request(
    protocol: str, model: str, prompt: str | list[int], max_tokens: int, *, cache_prompt: bool = False
) -> tuple[str, dict]:
    """Path and JSON body of one streamed, fixed-length completion.

    ``cache_prompt`` True lets llama-server reuse a cached prefix (the prefix-cache workload);
    every other measurement pays for its whole prompt.
    """
    if protocol == "openai":
        return "/v1/completions", {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            # vLLM and llama-server both honour ignore_eos on /v1/completions (an
            # extension to the OpenAI API): the output is exactly max_tokens long.
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            # llama-server reads this on its OpenAI routes too; vLLM ignores unknown fields.
            "cache_prompt": cache_prompt,
        }
    if protocol == "llamacpp":
        return "/completion", {
            "prompt": prompt,
            "n_predict": max_tokens,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "cache_prompt": cache_prompt,
        }
    raise BenchError(f"unknown protocol {protocol!r}: use 'openai' or 'llamacpp'")


def error_kind(status: int) -> str:
    if status in (401, 403):
        return f"http_{status}"
    if 500 <= status < 600:
        return "http_5xx"
    if 400 <= status < 500:
        return "http_4xx"
    return f"http_{status}"


class _StreamState:
    """What one request's event stream has told us so far."""

    def __init__(self) -> None:
        self.first_ms: float | None = None
        self.last_ms: float | None = None
        self.itl_ms: list[float] = []
        self.output_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.server_decode_tok_s: float | None = None
        self.server_prompt_ms: float | None = None
        self.server_cached_tokens: int | None = None
        self.server_prompt_tokens: int | None = None
        self.server_prompt_tok_s: float | None = None
        self.finished = False

    def content(self, at_ms: float) -> None:
        if self.first_ms is None:
            self.first_ms = at_ms
        else:
            self.itl_ms.append(round(at_ms - self.last_ms, 3))
        self.last_ms = at_ms

    def timings(self, timings: Any) -> None:
        if not isinstance(timings, dict):
            return
        if isinstance(timings.get("predicted_per_second"), (int, float)):
            self.server_decode_tok_s = float(timings["predicted_per_second"])
        if isinstance(timings.get("prompt_ms"), (int, float)):
            self.server_prompt_ms = float(timings["prompt_ms"])
        if isinstance(timings.get("cache_n"), int):
            self.server_cached_tokens = timings["cache_n"]
        if isinstance(timings.get("prompt_n"), int):
            self.server_prompt_tokens = timings["prompt_n"]
        if isinstance(timings.get("prompt_per_second"), (int, float)):
            self.server_prompt_tok_s = float(timings["prompt_per_second"])
        if self.output_tokens is None and isinstance(timings.get("predicted_n"), int):
            self.output_tokens = timings["predicted_n"]
        if self.prompt_tokens is None and isinstance(timings.get("prompt_n"), int):
            self.prompt_tokens = timings["prompt_n"]


class _MalformedStream(Exception):
    pass


class _StreamErrorEvent(Exception):
    pass


def _handle_event(protocol: str, data: str, state: _StreamState, at_ms: float) -> None:
    data = data.strip()
    if not data:
        return  # an event with no data (a keep-alive with an event: line)
    if data == "[DONE]":
        state.finished = True
        return
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise _MalformedStream(f"event data is not JSON: {data[:120]!r}") from None
    if not isinstance(chunk, dict):
        raise _MalformedStream(f"event data is not a JSON object: {data[:120]!r}")
    if "error" in chunk and not chunk.get("choices") and "content" not in chunk:
        raise _StreamErrorEvent(str(chunk["error"])[:300])
    state.timings(chunk.get("timings"))
    if protocol == "openai":
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            # The usage chunk is authoritative (vLLM sends it alone, choices=[]).
            if isinstance(usage.get("completion_tokens"), int):
                state.output_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                state.prompt_tokens = usage["prompt_tokens"]
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                state.server_cached_tokens = details["cached_tokens"]
        choices = chunk.get("choices")
        if choices is None:
            if usage is None and "timings" not in chunk:
                raise _MalformedStream(f"chunk has neither choices nor usage: {data[:120]!r}")
            return
        if not isinstance(choices, list):
            raise _MalformedStream(f"choices is not a list: {data[:120]!r}")
        text = ""
        for choice in choices:
            if not isinstance(choice, dict):
                raise _MalformedStream(f"a choice is not an object: {data[:120]!r}")
            # /v1/completions carries `text`; a chat stream's role-only first delta has no content.
            piece = choice.get("text")
            if piece is None and isinstance(choice.get("delta"), dict):
                piece = choice["delta"].get("content")
            text += piece or ""
        if text:
            state.content(at_ms)
        return
    # llama.cpp native: {"content": "...", "stop": bool, "tokens_predicted": n, "timings": {...}}
    if "content" not in chunk and "stop" not in chunk:
        raise _MalformedStream(f"chunk has neither content nor stop: {data[:120]!r}")
    if chunk.get("content"):
        state.content(at_ms)
    if chunk.get("stop"):
        state.finished = True
        if isinstance(chunk.get("tokens_predicted"), int):
            state.output_tokens = chunk["tokens_predicted"]
        if isinstance(chunk.get("tokens_evaluated"), int):
            state.prompt_tokens = chunk["tokens_evaluated"]


async def stream_request(
    client: httpx.AsyncClient,
    url: str,
    protocol: str,
    model: str,
    key: str | None,
    prompt: str | list[int],
    max_tokens: int,
    *,
    index: int = 0,
    scenario: str = "",
    concurrency: int = 1,
    timeout_s: float = 120,
    cache_prompt: bool = False,
) -> RequestSample:
    """One streamed completion, measured. Never raises for a server's fault: the sample says what went wrong."""
    path, payload = build_request(protocol, model, prompt, max_tokens, cache_prompt=cache_prompt)
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    sample = RequestSample(
        index=index,
        started_at=datetime.now(UTC),
        concurrency=concurrency,
        scenario=scenario,
        max_tokens=max_tokens,
    )
    state = _StreamState()
    got_response = False
    # Everything that is not sending happens before the clock starts: the request's JSON,
    # URL and headers are built here (vLLM's benchmark builds its payload first too).
    request = client.build_request("POST", url + path, json=payload, headers=headers)
    start = time.perf_counter()
    try:
        # asyncio.timeout bounds the whole request: httpx's read timeout is per read,
        # and a server trickling a byte a minute would otherwise never time out.
        async with asyncio.timeout(timeout_s):
            start = time.perf_counter()
            response = await client.send(request, stream=True)
            try:
                got_response = True
                sample.status = response.status_code
                if response.status_code != 200:
                    body = (await response.aread())[:300].decode("utf-8", "replace")
                    sample.error = error_kind(response.status_code)
                    sample.error_detail = f"HTTP {response.status_code}: {body}"
                    return sample
                async for event in EventSource(response).aiter_sse():
                    _handle_event(protocol, event.data, state, (time.perf_counter() - start) * 1000)
            finally:
                await response.aclose()
    except TimeoutError:
        sample.error, sample.error_detail = "timeout", f"no complete answer within {timeout_s:g} s"
    except _MalformedStream as exc:
        sample.error, sample.error_detail = "malformed_sse", str(exc)
    except SSEError as exc:  # wrong content type: not an event stream at all
        sample.error, sample.error_detail = "malformed_sse", str(exc)
    except _StreamErrorEvent as exc:
        sample.error, sample.error_detail = "stream_error", str(exc)
    except httpx.TimeoutException as exc:
        sample.error, sample.error_detail = "timeout", f"{type(exc).__name__}: {exc}"
    except httpx.ConnectError as exc:
        sample.error, sample.error_detail = "connect", f"{type(exc).__name__}: {exc}"
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        # The connection closed under us: before headers (a server going down between
        # accept and answer) or mid-stream. Either way the server stopped serving.
        sample.error = "server_stopped"
        where = "mid-stream" if got_response else "before answering"
        sample.error_detail = f"connection dropped {where}: {type(exc).__name__}: {exc}"
    except httpx.TransportError as exc:
        sample.error, sample.error_detail = "transport", f"{type(exc).__name__}: {exc}"
    except UnicodeDecodeError as exc:
        sample.error, sample.error_detail = "malformed_sse", f"stream is not UTF-8: {exc}"

    sample.output_tokens = state.output_tokens
    sample.prompt_tokens = state.prompt_tokens
    sample.server_decode_tok_s = state.server_decode_tok_s
    sample.server_prompt_ms = state.server_prompt_ms
    sample.server_cached_tokens = state.server_cached_tokens
    sample.server_prompt_tokens = state.server_prompt_tokens
    sample.server_prompt_tok_s = state.server_prompt_tok_s
    sample.itl_ms = state.itl_ms
    if state.first_ms is not None:
        sample.ttft_ms = round(state.first_ms, 3)
        sample.e2e_ms = round(state.last_ms, 3)
    if sample.error is None:
        if state.first_ms is None:
            sample.error, sample.error_detail = "no_content", "the stream ended without any text"
        elif not state.finished:
            final = "[DONE]" if protocol == "openai" else "final (stop) event"
            sample.error, sample.error_detail = "server_stopped", f"the stream ended before its {final}"
    if sample.ttft_ms is not None and sample.output_tokens and sample.output_tokens > 1:
        sample.tpot_ms = round((sample.e2e_ms - sample.ttft_ms) / (sample.output_tokens - 1), 3)
    return sample


# -- the benchmark -----------------------------------------------------------


async def wait_ready(client: httpx.AsyncClient, url: str, ready_timeout_s: float, progress: Progress) -> float:
    """Poll ``/health`` with backoff; 502/503/504 and refused connections mean "not ready yet"."""
    start = time.monotonic()
    delay = 0.2
    last = "no answer"
    announced = False
    while True:
        try:
            response = await client.get(f"{url}/health", timeout=min(10.0, max(ready_timeout_s, 1.0)))
            # 404: no /health route; 401/403: a proxy guards it too. Either way the server
            # answers: the warm-up requests tell whether completions work and the key is right.
            if response.status_code in (200, 401, 403, 404):
                return time.monotonic() - start
            last = f"HTTP {response.status_code}"
            if response.status_code not in NOT_READY_STATUSES:
                raise BenchError(f"{url}/health answered {last}: {response.text[:200]}")
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if time.monotonic() - start + delay > ready_timeout_s:
            raise BenchError(f"{url} is not ready after {ready_timeout_s:g} s (last: {last})")
        if not announced:
            progress(f"{url} not ready ({last}); retrying for up to {ready_timeout_s:g} s")
            announced = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _scenario(
    name: str,
    *,
    count: int,
    concurrency: int,
    max_tokens: int,
    send: Callable[..., Any],
    first_index: int,
    poisson_rate: float | None = None,
    rng: random.Random | None = None,
    arrival: str = "closed",
    arrival_rate: float | None = None,
) -> ScenarioResult:
    """``count`` requests, at most ``concurrency`` in flight; arrivals all at once, constant or Poisson."""
    arrival, arrival_rate = resolve_arrival(arrival, arrival_rate, poisson_rate)
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> RequestSample:
        async with limit:
            return await send(first_index + i, max_tokens, name, concurrency)

    start = time.perf_counter()
    tasks = []
    for i in range(count):
        if i:
            gap = arrival_gap_s(arrival, arrival_rate, rng or random)
            if gap:
                await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(one(i)))
    samples = list(await asyncio.gather(*tasks))
    return ScenarioResult.from_samples(
        name,
        concurrency,
        samples,
        time.perf_counter() - start,
        poisson_rate,
        arrival=arrival,
        arrival_rate=arrival_rate,
    )


def resolve_arrival(
    arrival: str | None, arrival_rate: float | None, poisson_rate: float | None = None
) -> tuple[str, float | None]:
    """The arrival pattern and its rate (arrivals.py); a bad pair is a BenchError."""
    try:
        return _resolve_arrival(arrival, arrival_rate, poisson_rate)
    except ValueError as exc:
        raise BenchError(str(exc)) from None


def _problems(report_scenarios: list[ScenarioResult], decode_tokens: int, timeout_s: float) -> list[str]:
    problems: list[str] = []
    samples = [s for sc in report_scenarios for s in sc.samples]
    failed = [s for s in samples if not s.ok]
    if failed:
        kinds = {}
        for s in failed:
            kinds[s.error] = kinds.get(s.error, 0) + 1
        summary = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        problems.append(f"{len(failed)} of {len(samples)} requests failed ({summary})")
        ordered = sorted(samples, key=lambda s: s.started_at)
        first_bad = next(i for i, s in enumerate(ordered) if not s.ok)
        if (
            any(s.ok for s in ordered[:first_bad])
            and all(s.error in ("connect", "server_stopped") for s in ordered[first_bad:] if not s.ok)
            and not any(s.ok for s in ordered[first_bad + 1 :])
        ):
            problems.append("the server stopped answering during the run (connections refused or dropped)")
        if "timeout" in kinds:
            problems.append(f"{kinds['timeout']} requests got no complete answer within {timeout_s:g} s")
        if "http_5xx" in kinds:
            problems.append(f"{kinds['http_5xx']} requests answered with a server error (5xx)")
        if "malformed_sse" in kinds:
            problems.append(f"{kinds['malformed_sse']} streams were not valid server-sent events")
    short = [
        s for s in samples if s.ok and s.output_tokens is not None and s.max_tokens and s.output_tokens != s.max_tokens
    ]
    if short:
        problems.append(
            f"{len(short)} requests returned a different number of tokens than requested "
            "(the server ignored ignore_eos/max_tokens): per-token figures compare unlike lengths"
        )
    missing = [s for s in samples if s.ok and s.output_tokens is None]
    if missing:
        problems.append(
            f"{len(missing)} streams reported no token count (no usage/timings): TPOT and tok/s are unknown for them"
        )
    return problems


async def run_benchmark(
    url: str,
    protocol: str,
    model: str,
    key: str | None,
    *,
    warmups: int = 2,
    ttft_requests: int = 10,
    ttft_max_tokens: int = 16,
    decode_tokens: int = 200,
    decode_requests: int = 3,
    sweep: Sequence[int] = (1, 8, 32),
    sweep_tokens: int = 64,
    sweep_rounds: int = 2,
    poisson_rate: float | None = None,
    timeout_s: float = 120,
    ready_timeout_s: float = 60,
    progress: Progress | None = None,
    endpoint: str | None = None,
    seed: int | None = None,
    arrival: str | None = None,
    arrival_rate: float | None = None,
    pool_threshold: int | None = None,
    pool_workers: int = 0,
) -> BenchReport:
    """Warm TTFT, single-stream decode and a concurrency sweep against one endpoint.

    * warm TTFT: ``warmups`` discarded requests, then ``ttft_requests`` short ones in sequence;
    * decode: ``decode_requests`` single streams of ``decode_tokens`` tokens, one at a time;
    * sweep: for each level c, ``sweep_rounds * c`` requests of ``sweep_tokens`` tokens with at
      most c in flight; all released at once (``arrival`` "closed"), or arriving at a constant
      rate or as a Poisson process of ``arrival_rate`` requests/s (vLLM's request-rate +
      max-concurrency semantics); ``poisson_rate`` alone is Poisson at that rate.

    Raises :class:`BenchError` when nothing can be measured: the endpoint is not ready
    within ``ready_timeout_s``, or it rejects the key. Every other failure is a
    request's error kind in the report, whose ``ok`` is False.
    """
    say = progress or (lambda _line: None)
    url = url.rstrip("/")
    build_request(protocol, model, "", 1)  # validates the protocol before anything is sent
    if any(c < 1 for c in sweep):
        raise BenchError(f"sweep levels must be >= 1, got {list(sweep)}")
    arrival, arrival_rate = resolve_arrival(arrival, arrival_rate, poisson_rate)
    if decode_tokens < 2 or ttft_max_tokens < 1 or sweep_tokens < 1:
        raise BenchError("decode_tokens must be >= 2 (decode rate needs two tokens), other lengths >= 1")
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    nonce = secrets.token_hex(4)
    rng = random.Random(seed)
    max_parallel = max([1, *sweep])
    # No keep-alive: llama-server (cpp-httplib) closes a connection after a streamed
    # answer without saying so, and the next request on it fails with "Server
    # disconnected without sending a response". A fresh localhost connection costs
    # ~0.1 ms of TTFT, and every request then pays the same, as a new client would.
    limits = httpx.Limits(max_connections=max_parallel + 2, max_keepalive_connections=0)
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def send(index: int, max_tokens: int, scenario: str, concurrency: int) -> RequestSample:
            return await stream_request(
                client,
                url,
                protocol,
                model,
                key,
                make_prompt(nonce, index),
                max_tokens,
                index=index,
                scenario=scenario,
                concurrency=concurrency,
                timeout_s=timeout_s,
            )

        waited = await wait_ready(client, url, ready_timeout_s, say)
        say(f"{url} ready after {waited:.1f} s; {warmups} warm-up requests")
        index = 0
        ready_deadline = time.monotonic() + ready_timeout_s
        done = 0
        delay = 0.25
        while done < max(warmups, 1):
            # At least one request before measuring: it proves the key, and a 503 here
            # (model still loading) is "not ready", retried like /health's.
            sample = await send(index, ttft_max_tokens, "warmup", 1)
            index += 1
            if sample.status in (401, 403):
                raise BenchError(
                    f"{url} rejected the key ({sample.status}): check the key file for this endpoint "
                    "(`idp-ops secrets generate`, then redeploy if it was rotated)"
                )
            if sample.status in NOT_READY_STATUSES or sample.error == "connect":
                if time.monotonic() + delay > ready_deadline:
                    raise BenchError(
                        f"{url} is not ready after {ready_timeout_s:g} s: completions answer "
                        f"{sample.error_detail or sample.error}"
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if sample.error:
                say(f"warm-up request failed ({sample.error}: {sample.error_detail}); measuring anyway")
            done += 1

        say(f"warm TTFT: {ttft_requests} requests of {ttft_max_tokens} tokens")
        warm = await _scenario(
            "warm_ttft", count=ttft_requests, concurrency=1, max_tokens=ttft_max_tokens, send=send, first_index=index
        )
        index += ttft_requests
        say(f"decode: {decode_requests} single streams of {decode_tokens} tokens")
        decode = await _scenario(
            "decode", count=decode_requests, concurrency=1, max_tokens=decode_tokens, send=send, first_index=index
        )
        index += decode_requests
        from idp_ops.validation import bench_pool  # here: bench_pool imports this module

        sweep_results = []
        for level in sweep:
            count = sweep_rounds * level
            say(f"sweep: concurrency {level}, {count} requests of {sweep_tokens} tokens")
            # One process binds near 128-256 streams (benchmarks/bench_accuracy.py): above
            # pool_threshold the level's streams are spread over worker processes.
            workers = (
                bench_pool.pool_workers(level, threshold=pool_threshold, workers=pool_workers) if pool_threshold else 1
            )
            if workers > 1:
                say(f"sweep: concurrency {level} over {workers} client processes")
                result = await bench_pool.pooled_scenario(
                    url,
                    protocol,
                    model,
                    key,
                    name=f"sweep_c{level}",
                    count=count,
                    concurrency=level,
                    max_tokens=sweep_tokens,
                    first_index=index,
                    nonce=nonce,
                    workers=workers,
                    timeout_s=timeout_s,
                    arrival=arrival or "closed",
                    arrival_rate=arrival_rate,
                    poisson_rate=poisson_rate,
                    seed=seed,
                )
            else:
                result = await _scenario(
                    f"sweep_c{level}",
                    count=count,
                    concurrency=level,
                    max_tokens=sweep_tokens,
                    send=send,
                    first_index=index,
                    poisson_rate=poisson_rate,
                    rng=rng,
                    arrival=arrival,
                    arrival_rate=arrival_rate,
                )
            index += count
            sweep_results.append(result)

    scenarios = [warm, decode, *sweep_results]
    errors: dict[str, int] = {}
    for scenario in scenarios:
        for kind, n in scenario.errors_by_kind.items():
            errors[kind] = errors.get(kind, 0) + n
    problems = _problems(scenarios, decode_tokens, timeout_s)
    good_decode = [s for s in decode.samples if s.ok]
    return BenchReport(
        endpoint=endpoint or url,
        protocol=protocol,
        url=url,
        model=model,
        started_at=started_at,
        warm_ttft=warm,
        decode=decode,
        sweep=sweep_results,
        decode_tok_s=_median(s.decode_tok_s for s in good_decode),
        server_decode_tok_s=_median(s.server_decode_tok_s for s in good_decode),
        errors_by_kind=dict(sorted(errors.items())),
        ok=not problems,
        problems=problems,
        wall_s=round(time.perf_counter() - clock, 3),
        settings={
            "warmups": warmups,
            "ttft_requests": ttft_requests,
            "ttft_max_tokens": ttft_max_tokens,
            "decode_tokens": decode_tokens,
            "decode_requests": decode_requests,
            "sweep": list(sweep),
            "sweep_tokens": sweep_tokens,
            "sweep_rounds": sweep_rounds,
            "poisson_rate": poisson_rate,
            "arrival": arrival,
            "arrival_rate": arrival_rate,
            "pool_threshold": pool_threshold,
            "pool_workers": pool_workers,
            "timeout_s": timeout_s,
        },
    )


def run_benchmark_sync(*args: Any, **kwargs: Any) -> BenchReport:
    """:func:`run_benchmark` for synchronous callers (CLI, Dagster assets). Not from inside a running loop."""
    return asyncio.run(run_benchmark(*args, **kwargs))


def discover_model(url: str, key: str | None, *, timeout_s: float = 10) -> str | None:
    """The first model id ``/v1/models`` lists (vLLM needs the exact name), or None."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/v1/models", headers=headers, timeout=timeout_s)
        data = response.json().get("data") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    if isinstance(data, list) and data and isinstance(data[0], dict) and isinstance(data[0].get("id"), str):
        return data[0]["id"]
    return None
