"""A fast local token server in its own process: every stream paced at a known interval, and timed.

It speaks just enough of both protocols for the streaming client (idp_ops.validation.bench):
llama.cpp's native ``/completion`` and OpenAI's ``/v1/completions``, streamed, with
``n_predict`` / ``max_tokens`` content events (one token each) and the final event or usage
chunk carrying the token count. Event i of a stream is due at start + i * interval on a fixed
schedule (a late event does not push the later ones back).

It records when it actually wrote each event: ``GET /stats`` answers
``{"interval_ms": ..., "streams": {prompt: [gap_ms, ...]}}`` (``?reset=1`` clears them), so a
benchmark can compare the ITL the client measured with the one the server produced, and
the client's added ITL is separated from the server's own lag on a busy machine.

Raw asyncio streams (uvloop when installed), not http.server: at 512 streams x 50 tokens/s
a threaded server would be the bottleneck it is here to rule out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import socket
import time
from urllib.parse import parse_qs, urlparse

import httpx


def _openai_chunk(text: str, finish: str | None = None) -> dict:
    return {"object": "text_completion", "choices": [{"text": text, "index": 0, "finish_reason": finish}]}


def _event(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return b"data: " + data.encode() + b"\n\n"


class _Server:
    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.streams: dict[str, list[float]] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target = request_line.split(" ")[:2]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = json.loads(await reader.readexactly(length)) if length else {}
            path = urlparse(target).path
            if method == "GET" and path == "/health":
                self._json(writer, {"status": "ok"})
            elif method == "GET" and path == "/stats":
                self._json(writer, {"interval_ms": self.interval_s * 1000, "streams": self.streams})
                if parse_qs(urlparse(target).query).get("reset"):
                    self.streams = {}
            elif method == "POST" and path in ("/completion", "/v1/completions"):
                await self._stream(writer, path, body)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    def _json(writer: asyncio.StreamWriter, payload: dict) -> None:
        body = json.dumps(payload).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(body)
            + body
        )

    async def _stream(self, writer: asyncio.StreamWriter, path: str, body: dict) -> None:
        openai = path == "/v1/completions"
        n = int((body.get("max_tokens") if openai else body.get("n_predict")) or 16)
        prompt = body.get("prompt")
        key = prompt if isinstance(prompt, str) else json.dumps(prompt)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        loop = asyncio.get_running_loop()
        event = _event(_openai_chunk("x")) if openai else b'data: {"content":"x","stop":false}\n\n'
        sent: list[float] = []
        start = loop.time()
        for i in range(n):
            # A fixed schedule: the i-th token is due at start + i*interval, whatever the drift.
            delay = start + i * self.interval_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(event)
            # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
            sent.append(time.perf_counter())
        span = sent[-1] - sent[0] if len(sent) > 1 else 0.0
        timings = {
            "predicted_n": n,
            "prompt_n": 8,
            "prompt_ms": 0.0,
            "predicted_per_second": (n - 1) / span if span > 0 else None,
        }
        if openai:
            writer.write(_event({**_openai_chunk("", "length"), "timings": timings}))
            writer.write(_event({"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": 8}}))
            writer.write(_event("[DONE]"))
        else:
            final = {"content": "", "stop": True, "tokens_predicted": n, "tokens_evaluated": 8, "timings": timings}
            writer.write(_event(final))
        self.streams[key] = [round((b - a) * 1000, 4) for a, b in zip(sent, sent[1:], strict=False)]


def serve(port_queue, interval_s: float, host: str = "127.0.0.1") -> None:
    """The server process's body: bind a free port, report it on ``port_queue``, serve forever."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio is fast enough for a few hundred streams
        pass

    async def main() -> None:
        server_state = _Server(interval_s)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        server = await asyncio.start_server(server_state.handle, sock=sock, backlog=4096)
        port_queue.put(sock.getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class TokenStreamServer:
    """``with TokenStreamServer(interval_ms=20) as server: ... server.url, server.stats(), server.pid``."""

    def __init__(self, interval_ms: float = 20.0):
        self.interval_ms = interval_ms
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self.url = ""

    def __enter__(self) -> TokenStreamServer:
        ports = self._context.Queue()
        self._process = self._context.Process(target=serve, args=(ports, self.interval_ms / 1000), daemon=True)
        self._process.start()
        self.url = f"http://127.0.0.1:{ports.get(timeout=60)}"
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(10)
            if self._process.is_alive():  # a loaded box: do not leave it serving after the block
                self._process.kill()
                self._process.join(10)

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def stats(self, *, reset: bool = False) -> dict:
        """Every finished stream's gaps between the events the server wrote, by prompt."""
        response = httpx.get(f"{self.url}/stats" + ("?reset=1" if reset else ""), timeout=30)
        response.raise_for_status()
        return response.json()
