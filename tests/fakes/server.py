"""Run an ASGI app with uvicorn in a background thread on 127.0.0.1, on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp


@contextmanager
def serve(app: ASGIApp, *, startup_timeout: float = 10.0, lifespan: str = "off", backlog: int = 2048,
          name: str = "fake-upstream") -> Iterator[str]:
    """Serve `app` for the duration of the block; yields its base URL ("http://127.0.0.1:PORT").
    Fakes run without lifespan; the Helyx app itself needs `lifespan="on"`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="critical", access_log=False, lifespan=lifespan,  # type: ignore[arg-type]
                            timeout_graceful_shutdown=1, timeout_keep_alive=5, backlog=backlog)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"{name}-{port}")
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
