"""A TCP proxy in front of a real server that fails connections on a script.

Each accepted connection takes the next action of ``script`` (the last one repeats):

* ``"forward"``: relay both ways until either side closes;
* ``"reset"``: accept, then close with RST before reading anything (a connection error);
* ``"reset_after_text"``: relay until the server's answer has carried text (the first SSE
  ``data:`` line holding a non-empty ``content`` or ``text``), then RST both sides.

``listen()`` binds late: a proxy made with ``port=`` and not yet listening refuses
connections on that port, as a server that has not started does.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time

_TEXT = re.compile(rb'"(?:content|text)":"[^"]')


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0: releasing the socket sends RST, the peer's next read fails with ECONNRESET.
    # shutdown(SHUT_RD) first wakes a relay thread blocked reading it: until that read returns,
    # close() alone would not release the socket, and nothing would be sent.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class FlakyProxy:
    def __init__(self, target_url: str, script: list[str], *, port: int = 0):
        host, _, target_port = target_url.split("://", 1)[1].partition(":")
        self.target = (host, int(target_port))
        self.script = list(script)
        self.connections: list[str] = []  # the action taken, per accepted connection
        self._sock: socket.socket | None = None
        self._port = port
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self.reset_delay_s = 0.5

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1] if self._sock else self._port

    def listen(self) -> FlakyProxy:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        sock.listen(16)
        self._sock = sock
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __enter__(self) -> FlakyProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        if self._sock:
            with contextlib.suppress(OSError):
                self._sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            index = len(self.connections)
            action = self.script[min(index, len(self.script) - 1)]
            self.connections.append(action)
            if action == "reset":
                _reset(client)
                continue
            thread = threading.Thread(target=self._relay, args=(client, action), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _relay(self, client: socket.socket, action: str) -> None:
        upstream = socket.create_connection(self.target, timeout=30)
        done = threading.Event()

        def pump(src: socket.socket, dst: socket.socket, watch: bool) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if watch and _TEXT.search(data):
                        # Let this text reach the client and be read (an RST can discard
                        # unread data), then cut both sides hard.
                        dst.sendall(data)
                        time.sleep(self.reset_delay_s)
                        _reset(client)
                        _reset(upstream)
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                done.set()

        threading.Thread(target=pump, args=(client, upstream, False), daemon=True).start()
        pump(upstream, client, action == "reset_after_text")
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
