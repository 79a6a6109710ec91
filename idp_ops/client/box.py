"""`Box`: ask the box a question from a script, sync or async, whole or streamed.

One streamed request per question, on the endpoint's own protocol (OpenAI ``/v1/completions``
or llama.cpp's native ``/completion``, built by :func:`idp_ops.validation.bench.build_request`
and read by its SSE event handling), so the figures mean what the nightly benchmark's mean:
TTFT at the first event carrying text, output tokens and decode rate from the server's
``usage``/``timings`` where it sends them.

* The key comes from the endpoint's key file and travels only in the Authorization header.
* A whole-answer deadline (``timeout_s``): a server trickling keep-alives cannot hold a caller.
* One retry on a connection error (refused, reset, dropped before any text); never on an HTTP
  error answer, a timeout, or once text has arrived (the caller may have printed it already).

The work is async; the sync calls run it on a private event loop in a worker thread, so they
also work inside a program that already runs a loop (a notebook).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from idp_ops.client.choice import Choice, choose_endpoint
from idp_ops.errors import IdpOpsError, ProblemFound
from idp_ops.settings import Settings, load_settings
from idp_ops.validation.bench import _handle_event, _MalformedStream, _StreamErrorEvent, _StreamState, build_request

DEFAULT_TIMEOUT_S = 120.0
# Errors that mean "the connection failed", not "the server said no": the one retry is for these.
_CONNECTION_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)


class BoxConnectionError(IdpOpsError, ConnectionError):
    """The endpoint could not be reached, after the retry (exit 2)."""


class ServerAnswerError(ProblemFound):
    """The server answered with an error: an HTTP error status or an error in the stream (exit 1)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AnswerStreamError(ProblemFound):
    """The answer broke off: dropped mid-stream, not server-sent events, or past the deadline (exit 1)."""


@dataclass
class Answer:
    text: str
    endpoint: str
    model: str
    protocol: str
    url: str
    # Milliseconds from sending to the first text, and to the last.
    ttft_ms: float | None
    e2e_ms: float | None
    # Decode rate: the server's own (llama.cpp timings.predicted_per_second) where sent, else
    # (output tokens - 1) / (E2E - TTFT) from the server's token count; tok_s_source says which.
    tok_s: float | None
    tok_s_source: str | None
    output_tokens: int | None
    prompt_tokens: int | None
    attempts: int = 1
    chosen_because: str = ""
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def figures_line(self) -> str:
        ttft = f"TTFT {self.ttft_ms:.0f} ms" if self.ttft_ms is not None else "TTFT -"
        rate = f"{self.tok_s:.1f} tok/s" if self.tok_s is not None else "- tok/s"
        tokens = f"{self.output_tokens} tokens" if self.output_tokens is not None else "? tokens"
        return f"{ttft}, {rate}, {tokens} · {self.endpoint} ({self.protocol}) · model {self.model}"


def _text_of(protocol: str, data: str) -> str:
    """The text one event carries; _handle_event has already judged the event well formed."""
    data = data.strip()
    if not data or data == "[DONE]":
        return ""
    chunk = json.loads(data)
    if protocol == "llamacpp":
        return chunk.get("content") or ""
    text = ""
    for choice in chunk.get("choices") or []:
        piece = choice.get("text")
        if piece is None and isinstance(choice.get("delta"), dict):
            piece = choice["delta"].get("content")
        text += piece or ""
    return text


class _Exchange:
    """One attempt: what the events told so far, and the Answer they make."""

    def __init__(self, choice: Choice, prompt: str, max_tokens: int, temperature: float | None):
        endpoint = choice.endpoint
        self.choice = choice
        self.protocol = endpoint.protocol
        path, body = build_request(endpoint.protocol, choice.model, prompt, max_tokens, cache_prompt=True)
        # A question ends where the model ends it (the benchmark forces a fixed length).
        body.pop("ignore_eos", None)
        if temperature is not None:
            body["temperature"] = temperature
        if endpoint.protocol == "llamacpp" and choice.model_requested:
            body["model"] = choice.model  # llama-server's router picks by it; one model ignores it
        self.url, self.body = endpoint.url + path, body
        self.state = _StreamState()
        self.pieces = 0
        self.start = time.perf_counter()

    def event(self, data: str) -> str:
        _handle_event(self.protocol, data, self.state, (time.perf_counter() - self.start) * 1000)
        text = _text_of(self.protocol, data)
        self.pieces += bool(text)
        return text

    def answer(self, text: str, attempts: int) -> Answer:
        state = self.state
        endpoint = self.choice.endpoint
        if not state.finished:
            final = "[DONE]" if self.protocol == "openai" else "final (stop) event"
            raise AnswerStreamError(f"{endpoint.name}: the answer ended before its {final} ({len(text)} chars came)")
        tok_s, source = state.server_decode_tok_s, "server" if state.server_decode_tok_s is not None else None
        n = state.output_tokens
        if tok_s is None and n and n > 1 and state.first_ms is not None and state.last_ms > state.first_ms:
            tok_s, source = (n - 1) / ((state.last_ms - state.first_ms) / 1000), "client"
        return Answer(
            text=text,
            endpoint=endpoint.name,
            model=self.choice.model,
            protocol=self.protocol,
            url=endpoint.url,
            ttft_ms=round(state.first_ms, 3) if state.first_ms is not None else None,
            e2e_ms=round(state.last_ms, 3) if state.last_ms is not None else None,
            tok_s=round(tok_s, 3) if tok_s is not None else None,
            tok_s_source=source,
            output_tokens=n,
            prompt_tokens=state.prompt_tokens,
            attempts=attempts,
            chosen_because=self.choice.reason,
            skipped=dict(self.choice.skipped),
        )


async def _within(deadline: float, awaitable):
    # Each await gets the time left; a deadline spanning the caller's own code between
    # pieces would cancel the caller's task outside this generator.
    async with asyncio.timeout_at(deadline):
        return await awaitable


class Box:
    """The box's endpoints, for scripts. ``settings``: a Settings, a YAML path, or None ($IDP_CONFIG / ./idp-ops.yaml).

    ``on_retry(attempt, error)`` is called before the one retry (a script may log it).
    """

    def __init__(
        self,
        settings: Settings | str | Path | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = 5.0,
        health_timeout_s: float = 2.0,
        retry_delay_s: float = 0.25,
        on_retry: Callable[[int, Exception], None] | None = None,
    ):
        self.settings = settings if isinstance(settings, Settings) else load_settings(settings)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.health_timeout_s = health_timeout_s
        self.retry_delay_s = retry_delay_s
        self.on_retry = on_retry

    # -- public API ------------------------------------------------------------

    def ask(
        self,
        prompt: str,
        *,
        model: str | None = None,
        endpoint: str | None = None,
        max_tokens: int = 256,
        stream: bool = False,
        timeout_s: float | None = None,
        temperature: float | None = None,
    ) -> Answer | AnswerStream:
        """The whole Answer; with ``stream=True`` an :class:`AnswerStream` of text pieces instead."""
        pieces = AnswerStream(
            lambda: self._run(prompt, model, endpoint, max_tokens, timeout_s or self.timeout_s, temperature)
        )
        if stream:
            return pieces
        with pieces:
            for _ in pieces:
                pass
        return pieces.answer

    def stream(self, prompt: str, **kwargs: Any) -> AnswerStream:
        """``ask(..., stream=True)``: iterate for text pieces as they arrive; ``.answer`` has the figures after."""
        return self.ask(prompt, stream=True, **kwargs)

    async def aask(
        self,
        prompt: str,
        *,
        model: str | None = None,
        endpoint: str | None = None,
        max_tokens: int = 256,
        stream: bool = False,
        timeout_s: float | None = None,
        temperature: float | None = None,
    ) -> Answer | AsyncAnswerStream:
        """Async :meth:`ask`; with ``stream=True`` an :class:`AsyncAnswerStream` (``async for``)."""
        pieces = AsyncAnswerStream(
            self._run(prompt, model, endpoint, max_tokens, timeout_s or self.timeout_s, temperature)
        )
        if stream:
            return pieces
        async with pieces:
            async for _ in pieces:
                pass
        return pieces.answer

    def astream(
        self,
        prompt: str,
        *,
        model: str | None = None,
        endpoint: str | None = None,
        max_tokens: int = 256,
        timeout_s: float | None = None,
        temperature: float | None = None,
    ) -> AsyncAnswerStream:
        """An :class:`AsyncAnswerStream` without awaiting first: ``async for piece in box.astream(...)``."""
        return AsyncAnswerStream(
            self._run(prompt, model, endpoint, max_tokens, timeout_s or self.timeout_s, temperature)
        )

    async def achoose(self, *, model: str | None = None, endpoint: str | None = None) -> Choice:
        """Which endpoint would answer, and why the others would not."""
        return await choose_endpoint(
            self.settings, model=model, endpoint=endpoint, health_timeout_s=self.health_timeout_s
        )

    # -- the work ----------------------------------------------------------------

    def _key(self, choice: Choice) -> str | None:
        from idp_ops.stack.secrets import read_key

        key_file = self.settings.key_file(choice.endpoint)
        return read_key(key_file) if key_file else None

    async def _run(
        self,
        prompt: str,
        model: str | None,
        endpoint: str | None,
        max_tokens: int,
        timeout_s: float,
        temperature: float | None,
    ) -> AsyncIterator[str | Answer]:
        """Text pieces as they arrive, then the Answer."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise IdpOpsError("the prompt is empty")
        if max_tokens < 1:
            raise IdpOpsError(f"max_tokens must be >= 1, got {max_tokens}")
        choice = await self.achoose(model=model, endpoint=endpoint)
        key = self._key(choice)
        name = choice.endpoint.name
        headers = {"Accept": "text/event-stream"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(timeout_s, connect=min(self.connect_timeout_s, timeout_s))
        deadline = asyncio.get_running_loop().time() + timeout_s
        # No keep-alive: llama-server closes a connection after a streamed answer without saying so.
        async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for attempt in (1, 2):
                exchange = _Exchange(choice, prompt, max_tokens, temperature)
                text: list[str] = []
                try:
                    request = client.build_request("POST", exchange.url, json=exchange.body, headers=headers)
                    exchange.start = time.perf_counter()
                    response = await _within(deadline, client.send(request, stream=True))
                    try:
                        if response.status_code != 200:
                            raw = await _within(deadline, response.aread())
                            raise self._status_error(choice, response.status_code, raw)
                        events = EventSource(response).aiter_sse()
                        while True:
                            try:
                                event = await _within(deadline, anext(events))
                            except StopAsyncIteration:
                                break
                            piece = exchange.event(event.data)
                            if piece:
                                text.append(piece)
                                yield piece
                    finally:
                        await response.aclose()
                except _CONNECTION_ERRORS as exc:
                    if exchange.pieces:
                        raise AnswerStreamError(
                            f"{name}: the connection dropped mid-answer after {len(''.join(text))} chars "
                            f"({type(exc).__name__}); not retried once text has arrived"
                        ) from None
                    if attempt == 2:
                        raise BoxConnectionError(
                            f"{name} at {choice.endpoint.url} could not be reached after 2 attempts "
                            f"({type(exc).__name__}: {exc})"
                        ) from None
                    if self.on_retry:
                        self.on_retry(attempt, exc)
                    await asyncio.sleep(self.retry_delay_s)
                    continue
                except TimeoutError:
                    raise AnswerStreamError(
                        f"{name}: no complete answer within {timeout_s:g} s ({len(''.join(text))} chars came)"
                    ) from None
                except httpx.TimeoutException as exc:
                    raise AnswerStreamError(f"{name}: timed out ({type(exc).__name__})") from None
                except (_MalformedStream, SSEError, UnicodeDecodeError) as exc:
                    raise AnswerStreamError(f"{name}: the answer is not a valid event stream: {exc}") from None
                except _StreamErrorEvent as exc:
                    raise ServerAnswerError(f"{name} answered with an error in the stream: {exc}") from None
                except httpx.TransportError as exc:
                    raise AnswerStreamError(f"{name}: transport error {type(exc).__name__}: {exc}") from None
                yield exchange.answer("".join(text), attempt)
                return

    def _status_error(self, choice: Choice, status: int, raw: bytes) -> ServerAnswerError:
        name = choice.endpoint.name
        if status in (401, 403):
            key_file = self.settings.key_file(choice.endpoint)
            where = f"the key in {key_file}" if key_file else "no key (settings name no key_name for it)"
            return ServerAnswerError(
                f"{name} rejected the key (HTTP {status}): it was sent {where}; "
                "run `idp-ops secrets generate`, and redeploy if the key was rotated",
                status,
            )
        # A server's error body never echoes the Authorization header; cut it short anyway.
        body = raw[:300].decode("utf-8", "replace").strip()
        return ServerAnswerError(f"{name} answered HTTP {status}: {body}", status)


# -- streams -------------------------------------------------------------------


class AsyncAnswerStream:
    """``async for piece in stream`` yields text as it arrives; ``stream.answer`` holds the figures after."""

    def __init__(self, source: AsyncIterator[str | Answer]):
        self._source = source
        self.answer: Answer | None = None

    def __aiter__(self) -> AsyncAnswerStream:
        return self

    async def __anext__(self) -> str:
        if self.answer is not None:
            raise StopAsyncIteration
        item = await anext(self._source)
        if isinstance(item, Answer):
            self.answer = item
            await self._source.aclose()
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        await self._source.aclose()

    async def __aenter__(self) -> AsyncAnswerStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


_END = object()


class AnswerStream:
    """``for piece in stream`` yields text as it arrives; ``stream.answer`` holds the figures after.

    The request runs on its own event loop in a worker thread from the moment the stream is
    made; ``close()`` (or leaving a ``with`` block) cancels it if the caller stops early.
    """

    def __init__(self, source: Callable[[], AsyncIterator[str | Answer]]):
        self.answer: Answer | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._done = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(source,), name="idp-ops-box", daemon=True)
        self._thread.start()
        self._started.wait()

    def _pump(self, source: Callable[[], AsyncIterator[str | Answer]]) -> None:
        async def run() -> None:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            self._started.set()
            try:
                async for item in source():
                    self._queue.put(item)
            except asyncio.CancelledError:  # the caller closed the stream early: end it quietly
                self._queue.put(_END)
                return
            except BaseException as exc:  # handed to the caller's thread, raised there
                self._queue.put(exc)
            self._queue.put(_END)

        asyncio.run(run())

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, str):
            return item
        self._done = True
        self._thread.join()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Answer):
            self.answer = item
        raise StopIteration

    def close(self) -> None:
        if not self._done and self._loop is not None and self._task is not None:
            # RuntimeError: the loop already finished, nothing left to cancel.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._done = True
        self._thread.join()

    def __enter__(self) -> AnswerStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
