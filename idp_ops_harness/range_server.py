"""A static file server that honours `Range: bytes=N-` and can misbehave on cue (drops, stalls, statuses).

The `server` fixture in conftest.py runs it on a free loopback port for the downloads tests.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    # path -> bytes to send before dropping the connection / stalling (first request only).
    drop_after: dict[str, int] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)  # path -> forced status, every request
    ignore_range: bool = False


class RangeHandler(BaseHTTPRequestHandler):
    """A static file server that honours `Range: bytes=N-` and can misbehave on cue."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        state: ServerState = self.server.state
        state.requests.append((self.path, dict(self.headers)))
        if self.path in state.redirects:
            self.send_response(302)
            self.send_header("Location", state.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in state.status:
            self.send_error(state.status[self.path])
            return
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        payload = body[start:]
        drop = state.drop_after.pop(self.path, None)
        stall = state.stall_after.pop(self.path, None)
        if drop is not None:
            self.wfile.write(payload[:drop])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the link goes away mid-body
            self.close_connection = True
            return
        if stall is not None:
            self.wfile.write(payload[:stall])
            self.wfile.flush()
            time.sleep(3)  # longer than the client's read timeout
            self.close_connection = True
            return
        try:
            for offset in range(0, len(payload), 256 * 1024):
                self.wfile.write(payload[offset : offset + 256 * 1024])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client hung up mid-body (a test that refuses a download)

    def log_message(self, *args):
        pass
