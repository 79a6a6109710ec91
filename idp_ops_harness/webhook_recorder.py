"""A local HTTP server standing in for the alerts webhook (ntfy/Slack-style), and the alerts log as records."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Recorder(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.received.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class RecordingWebhook:
    """Answers 200 to every POST and keeps the JSON bodies, in order."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        self._server.received = []
        self._server.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def received(self) -> list[dict]:
        with self._server.lock:
            return list(self._server.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def read_alerts(log_path: Path) -> list[dict]:
    """The alerts log's records (none when the file does not exist)."""
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
