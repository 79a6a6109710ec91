"""Free TCP ports on the loopback interface, never the same one twice in a test run."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

_handed_out: set[int] = set()


def free_port() -> int:
    # The kernel may hand a just-released port out again; two settings files built in
    # one test must not name the same port (the second stack would fail to bind).
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port where a connect is refused for as long as the block runs: bound, never listening.

    A port some server just released may be taken again (or that server may not be gone yet); a bound
    socket keeps the port ours and answers every SYN with a reset."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
