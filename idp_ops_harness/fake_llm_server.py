"""A scripted local LLM server: /health, /v1/completions and /completion answer per mode,
streaming server-sent events in pieces with pauses as a real server's writes arrive."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _event(obj) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _text_chunk(text: str) -> dict:
    return {"choices": [{"text": text, "index": 0, "finish_reason": None}], "object": "text_completion"}


class FakeServer:
    """A local HTTP server whose /v1/completions and /completion follow a script per mode.

    Streams are written unchunked with ``Connection: close`` (the body ends when the
    socket closes), in pieces with pauses, as a real server's writes arrive.
    """

    def __init__(self, mode: str, *, not_ready_for_s: float = 0.0):
        self.mode = mode
        self.not_ready_until = time.monotonic() + not_ready_for_s
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
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
