"""A TCP proxy to a real server that can be frozen: while frozen, the connections it carries stay
open and pass no bytes (a server that stopped answering, or a network that silently drops
packets), and new connections are closed at once (or, optionally, held silent as well). A test
then sees what a client does when a database it already talks to goes silent."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress


class FreezableProxy:
    def __init__(self, target: tuple[str, int], *, refuse_new_when_frozen: bool = True) -> None:
        self.target = target
        self.refuse_new_when_frozen = refuse_new_when_frozen  # else a new one is held silent too
        self.frozen = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closing = False

    def serve(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.frozen.is_set() and self.refuse_new_when_frozen:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                while self.frozen.is_set() and not self._closing:  # held, not passed on while frozen
                    time.sleep(0.05)
                if self._closing:
                    return
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closing = True
        self.frozen.clear()
        with suppress(OSError):
            self._listener.close()
        for sock in self._sockets:
            with suppress(OSError):
                sock.close()


@contextmanager
def freezable_proxy(host: str, port: int, *, refuse_new_when_frozen: bool = True) -> Iterator[FreezableProxy]:
    proxy = FreezableProxy((host, port), refuse_new_when_frozen=refuse_new_when_frozen)
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        thread.join(5)
