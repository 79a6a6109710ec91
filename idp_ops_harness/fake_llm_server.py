"""A scripted local LLM server: /health, /v1/completions and /completion answer per mode,
streaming server-sent events in pieces with pauses as a real server's writes arrive.

Mode ``llama`` behaves like llama-server for the workloads: a word tokenizer behind
``/tokenize`` and ``/detokenize`` (one token per word and its trailing space, BOS id 1
added on request), ``/props`` with a per-slot ``n_ctx``, a Prometheus ``/metrics`` behind
the key, and completions whose final event carries ``timings`` (prompt_n, cache_n,
prompt_ms, ...) and a TTFT proportional to the tokens not served from its one-slot cache."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _event(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


_WORD = re.compile(r"\S+\s*|\s+")


def _text_chunk(text: str) -> dict:
    return {"choices": [{"text": text, "index": 0, "finish_reason": None}], "object": "text_completion"}


class FakeServer:
    """A local HTTP server whose /v1/completions and /completion follow a script per mode.

    Streams are written unchunked with ``Connection: close`` (the body ends when the
    socket closes), in pieces with pauses, as a real server's writes arrive.
    """

    def __init__(
        self,
        mode: str,
        *,
        not_ready_for_s: float = 0.0,
        key: str | None = None,
        n_ctx: int = 2048,
        prefill_ms_per_token: float = 0.5,
        metrics: bool = True,
    ):
        self.mode = mode
        self.not_ready_until = time.monotonic() + not_ready_for_s
        self.requests: list[dict] = []
        # Mode "llama": the key its routes ask for (None: none), the context of a slot, the
        # cost of each prompt token not found in the cache, and whether /metrics exists.
        self.key = key
        self.n_ctx = n_ctx
        self.prefill_ms_per_token = prefill_ms_per_token
        self.metrics = metrics
        self.vocab: dict[str, int] = {}
        self.pieces: dict[int, str] = {}
        self.cached: list[int] = []  # the one slot's cached prompt
        self.in_flight = 0
        self.metric_scrapes = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if server.mode == "llama" and self.path in ("/props", "/metrics", "/slots"):
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        server.answer_get(self)
                    return
                if self.path == "/health":
                    status = 503 if time.monotonic() < server.not_ready_until else 200
                    body = b'{"status":"ok"}' if status == 200 else b'{"error":"Loading model"}'
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(
                    {"path": self.path, "payload": payload, "auth": self.headers.get("Authorization")}
                )
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if server.mode == "llama":
                        server.answer_llama(self, payload)
                    else:
                        server.answer(self, payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- mode "llama": a llama-server for the workloads --------------------------------

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        with self._lock:
            ids = [1] if add_special else []
            for piece in _WORD.findall(text):
                if piece not in self.vocab:
                    self.vocab[piece] = len(self.vocab) + 10
                    self.pieces[self.vocab[piece]] = piece
                ids.append(self.vocab[piece])
            return ids

    def detokenize(self, ids: list[int]) -> str:
        return "".join(self.pieces.get(i, "") for i in ids if i >= 10)

    @staticmethod
    def _json(handler, status: int, obj, content_type: str = "application/json") -> None:
        body = obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _authorized(self, handler) -> bool:
        if self.key and handler.headers.get("Authorization") != f"Bearer {self.key}":
            self._json(handler, 401, {"error": {"code": 401, "message": "Invalid API Key"}})
            return False
        return True

    def answer_get(self, handler) -> None:
        if not self._authorized(handler):
            return
        if handler.path == "/props":
            self._json(handler, 200, {"default_generation_settings": {"n_ctx": self.n_ctx}, "total_slots": 1})
        elif handler.path == "/slots":
            self._json(handler, 200, [{"id": 0, "n_ctx": self.n_ctx}])
        elif not self.metrics:
            self._json(handler, 501, {"error": {"code": 501, "message": "This server does not support metrics"}})
        else:
            self.metric_scrapes += 1
            text = (
                "# HELP llamacpp:requests_processing Number of requests processing\n"
                "# TYPE llamacpp:requests_processing gauge\n"
                f"llamacpp:requests_processing {self.in_flight}\n"
                "# TYPE llamacpp:requests_deferred gauge\n"
                "llamacpp:requests_deferred 0\n"
                f'llamacpp:kv_cache_usage_ratio{{slot="0"}} {len(self.cached) / self.n_ctx:.4f}\n'
            )
            self._json(handler, 200, text, "text/plain; version=0.0.4")

    def answer_llama(self, handler, payload: dict) -> None:
        if handler.path in ("/tokenize", "/detokenize"):
            if not self._authorized(handler):
                return
            if handler.path == "/tokenize":
                ids = self.tokenize(payload.get("content", ""), bool(payload.get("add_special")))
                self._json(handler, 200, {"tokens": ids})
            else:
                self._json(handler, 200, {"content": self.detokenize(payload.get("tokens", []))})
            return
        if not self._authorized(handler):
            return
        prompt = self.tokenize(payload.get("prompt", ""), add_special=True)
        if len(prompt) + (payload.get("n_predict") or payload.get("max_tokens") or 4) > self.n_ctx:
            self._json(handler, 400, {"error": {"code": 400, "message": "the request exceeds the context size"}})
            return
        with self._lock:
            cache_n = 0
            if payload.get("cache_prompt", True):
                while cache_n < min(len(prompt), len(self.cached)) - 1 and prompt[cache_n] == self.cached[cache_n]:
                    cache_n += 1
            self.cached = prompt
            self.in_flight += 1
        try:
            prompt_n = len(prompt) - cache_n
            self._start_stream(handler)
            prompt_ms = prompt_n * self.prefill_ms_per_token
            time.sleep(prompt_ms / 1000)
            n = payload.get("max_tokens") or payload.get("n_predict") or 4
            openai = handler.path == "/v1/completions"
            for _ in range(n):
                handler.wfile.write(_event(_text_chunk("w ") if openai else {"content": "w ", "stop": False}))
                handler.wfile.flush()
                time.sleep(0.002)
            timings = {
                "cache_n": cache_n,
                "prompt_n": prompt_n,
                "prompt_ms": prompt_ms,
                "prompt_per_second": 1000 / self.prefill_ms_per_token,
                "predicted_n": n,
                "predicted_ms": 2.0 * n,
                "predicted_per_second": 500.0,
            }
            if openai:
                usage = {
                    "completion_tokens": n,
                    "prompt_tokens": len(prompt),
                    "prompt_tokens_details": {"cached_tokens": cache_n},
                }
                final = {"choices": [{"text": "", "index": 0, "finish_reason": "length"}], "usage": usage}
                handler.wfile.write(_event({**final, "timings": timings}))
                handler.wfile.write(b"data: [DONE]\n\n")
            else:
                final = {"content": "", "stop": True, "tokens_predicted": n, "tokens_evaluated": len(prompt)}
                handler.wfile.write(_event({**final, "timings": timings}))
            handler.wfile.flush()
        finally:
            with self._lock:
                self.in_flight -= 1

    @staticmethod
    def _start_stream(handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()

    def answer(self, handler, payload: dict) -> None:
        write = handler.wfile.write
        flush = handler.wfile.flush
        mode = self.mode
        if mode in ("http_500", "http_401"):
            status = int(mode[5:])
            body = b'{"error":{"code":%d,"message":"scripted"}}' % status
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            write(body)
            return
        if mode == "not_sse":
            handler.send_response(200)
            handler.send_header("Content-Type", "text/html")
            handler.end_headers()
            write(b"<html>a proxy error page</html>\n")
            return
        self._start_stream(handler)
        n = payload.get("max_tokens") or payload.get("n_predict") or 4
        if mode == "openai_edge_cases":
            # A comment, a ping, a role-only chunk and an empty-text chunk before any text:
            # none of them is the first token.
            write(b": keep-alive comment\n\n")
            write(b"event: ping\ndata: \n\n")
            write(_event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
            write(_event(_text_chunk("")))
            flush()
            time.sleep(0.15)
            # Two tokens per event for the first half: counting events would be wrong.
            event = _event(_text_chunk("ab"))
            write(event[:7])  # an event split across writes mid-line
            flush()
            time.sleep(0.02)
            write(event[7:])
            flush()
            for _ in range(n - 3):
                time.sleep(0.02)
                write(_event(_text_chunk("x")))
                flush()
            write(_event({"choices": [{"text": "", "index": 0, "finish_reason": "length"}]}))
            # vLLM's usage-only chunk: choices empty, usage authoritative.
            write(
                _event({"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": 11, "total_tokens": n + 11}})
            )
            write(b"data: [DONE]\n\n")
            flush()
        elif mode == "malformed":
            write(_event(_text_chunk("ok")))
            write(b"data: {this is not json\n\n")
            flush()
        elif mode == "trickle":
            # Headers, then a ping every 0.1 s, forever: only a whole-request deadline ends it.
            for _ in range(600):
                write(b": ping\n\n")
                flush()
                time.sleep(0.1)
        elif mode == "llamacpp_truncated":
            for _ in range(3):
                write(_event({"content": "x", "stop": False}))
                flush()
            # the socket closes without the final stop event
        elif mode == "openai_truncated":
            for _ in range(3):
                write(_event(_text_chunk("x")))
                flush()
            # closes without usage or [DONE]
        elif mode == "stream_error":
            write(_event({"error": {"code": 500, "message": "context overflow"}}))
            flush()
        else:
            raise AssertionError(mode)
