"""A port on 127.0.0.1 that refuses every connection, for as long as the test needs it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port bound but never listened on: a connection to it is refused (Linux answers with a
    reset), and, held, no other test's server can take it meanwhile, as it could a port bound and
    closed again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
