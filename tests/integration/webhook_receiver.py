"""A local webhook receiver for the tests that run real processes: it records every POST, and
fails the first ones of a path on request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.server import serve


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every POST; answers `fail_first` of them per path with a 500."""

    fail_first: dict[str, int] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.deliveries.append(Delivery(request.url.path, dict(request.headers), body))
            seen = sum(d.path == request.url.path for d in self.deliveries)
        return Response(status_code=500 if seen <= self.fail_first.get(request.url.path, 0) else 204)

    def to(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]

    def wait(self, path: str, count: int, timeout: float = 20.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(self.to(path)) < count:
            assert time.monotonic() < deadline, f"{len(self.to(path))} of {count} deliveries to {path}"
            time.sleep(0.02)
        return self.to(path)


@contextmanager
def running_receiver() -> Iterator[tuple[Receiver, str]]:
    """The receiver and its base URL (http://127.0.0.1:PORT), served for the block."""
    recorder = Receiver()
    app = Starlette(routes=[Route("/{name}", recorder.hook, methods=["POST"])])
    with serve(app) as url:
        yield recorder, url
