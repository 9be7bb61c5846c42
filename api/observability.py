"""Per-request metrics and one JSON log line per request (pure ASGI, measured to the last byte,
so a stream is logged when it ends, with its tokens and credits).

Handlers add fields for the line to `request.state.log` (a dict): account, key prefix, model,
tokens, credits. Never a full key; never a prompt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.metrics import LATENCY, REQUESTS

log = logging.getLogger("helyx.request")
_SKIP = frozenset({"/metrics", "/healthz", "/readyz"})
# The method label takes these values only: a client's made-up method must not mint new series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_instruments: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _instruments_for(route: str, method: str, status: int) -> tuple[Any, Any]:
    """The request counter and latency histogram children for these labels, looked up once:
    prometheus_client's `labels()` validates and locks on every call."""
    key = (route, method, status)
    found = _instruments.get(key)
    if found is None:
        found = _instruments[key] = (REQUESTS.labels(route, method, str(status)), LATENCY.labels(route, method))
    return found


class InFlight:
    """The requests this app is serving. At shutdown uvicorn cancels what outlived the grace and
    goes straight on to the lifespan's end: waiting here lets those requests finish their own
    cleanup (a cut stream's settlement, its log line) before the app closes its pools."""

    def __init__(self) -> None:
        self.count = 0

    async def drained(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.count == 0


class ObservabilityMiddleware:
    """`fixed_paths`: paths without parameters served by routes that do not leave themselves in
    the scope (FastAPI's /openapi.json and /docs): labelled by their path, not as unmatched."""

    def __init__(self, app: ASGIApp, in_flight: InFlight | None = None,
                 fixed_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.in_flight = in_flight or InFlight()
        self.fixed_paths = fixed_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        fields: dict[str, object] = {}
        state["log"] = fields
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight.count += 1
        try:
            await self.app(scope, receive, observe)
        finally:
            self.in_flight.count -= 1
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                scope["path"] if status < 400 and scope["path"] in self.fixed_paths else "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "other"
            requests, latency = _instruments_for(template, method, status)
            requests.inc()
            latency.observe(elapsed)
            if template not in _SKIP:
                log.info("request", extra={
                    "request_id": state.get("request_id"), "method": method, "route": template,
                    "status": status, "latency_ms": round(elapsed * 1000, 2), **fields,
                })
