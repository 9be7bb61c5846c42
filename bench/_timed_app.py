"""The gateway app with timers around each phase of a request, for bench/chat.py's wall-time
attribution at concurrency 1 (never used in production):

    uvicorn bench._timed_app:app      GET /bench/timings -> per-phase medians; DELETE resets

Per request (a context variable, so it also works under concurrency). Timed: the whole request
(outermost ASGI wrapper), authentication (the key query: on the event loop with PostgreSQL,
else with the daily reset and touch inside the threadpool), the rate-limit call (Redis), the
reservation and the settlement+generation insert (on the event loop with PostgreSQL, else
inside the threadpool), the upstream call (httpx), and every threadpool hop (time from the event
loop's await to the thread starting and back, minus the work inside). `other` is the rest:
routing, body parsing and validation, JSON rendering, middleware, uvicorn.
"""

from __future__ import annotations

import contextvars
import statistics
import time
from collections import defaultdict
from typing import Any

from starlette.types import Receive, Scope, Send

from api import chat_call, chat_flow, deps
from common import accounts, admit_pg, chat_billing
from common.providers.openai_compat import OpenAICompatProvider
from common.ratelimit import RateLimiter

_perf = time.perf_counter
_request: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("bench_request", default=None)
_samples: dict[str, list[float]] = defaultdict(list)


def _add(name: str, seconds: float) -> None:
    current = _request.get()  # per request (threadpool calls see the caller's context)
    if current is not None:
        current[name] = current.get(name, 0.0) + seconds


def _timed_sync(name: str, func: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = _perf()
        try:
            return func(*args, **kwargs)
        finally:
            _add(name, _perf() - t0)
    return wrapper


def _timed_async(name: str, func: Any) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = _perf()
        try:
            return await func(*args, **kwargs)
        finally:
            _add(name, _perf() - t0)
    return wrapper


def _timed_threadpool(original: Any) -> Any:
    async def run(func: Any, *args: Any, **kwargs: Any) -> Any:
        box = [0.0]

        def inner() -> Any:
            t = _perf()
            try:
                return func(*args, **kwargs)
            finally:
                box[0] = _perf() - t

        t0 = _perf()
        try:
            return await original(inner)
        finally:
            _add("threadpool hops", _perf() - t0 - box[0])
            _add("#count threadpool hops", 1.0)
    return run


deps._authenticate = _timed_sync("auth (key query, reset check, touch)", deps._authenticate)
deps.run_in_threadpool = _timed_threadpool(deps.run_in_threadpool)
chat_flow.run_in_threadpool = _timed_threadpool(chat_flow.run_in_threadpool)
chat_call.run_in_threadpool = _timed_threadpool(chat_call.run_in_threadpool)
chat_billing.reserve_chat = _timed_sync("reserve (ledger)", chat_billing.reserve_chat)
chat_billing.finish_chat = _timed_sync("settle + generation insert", chat_billing.finish_chat)
accounts.authenticate_async = _timed_async("auth (key query, reset check, touch)", accounts.authenticate_async)
chat_billing.reserve_chat_async = _timed_async("reserve (ledger)", chat_billing.reserve_chat_async)
chat_billing.finish_chat_async = _timed_async("settle + generation insert", chat_billing.finish_chat_async)
RateLimiter.hit = _timed_async("rate limit (Redis)", RateLimiter.hit)  # type: ignore[method-assign]
# A key seen before: its lookup and the reservation in one statement (api.chat_admission).
admit_pg.authenticate_and_reserve = _timed_async("key + reserve in one statement", admit_pg.authenticate_and_reserve)
OpenAICompatProvider.complete = _timed_async(  # type: ignore[method-assign]
    "upstream call (httpx + fake)", OpenAICompatProvider.complete)



def _counting(name: str, func: Any) -> Any:
    """Count calls per request (a psycopg wait is one round trip to PostgreSQL)."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _add(name, 1.0)
        return func(*args, **kwargs)
    return wrapper


def _counting_async(name: str, func: Any) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        _add(name, 1.0)
        return await func(*args, **kwargs)
    return wrapper


import psycopg  # noqa: E402
from redis.asyncio.connection import AbstractConnection  # noqa: E402

psycopg.Connection.wait = _counting("#count PostgreSQL round trips", psycopg.Connection.wait)  # type: ignore
psycopg.AsyncConnection.wait = _counting_async(  # type: ignore[method-assign]
    "#count PostgreSQL round trips", psycopg.AsyncConnection.wait)
AbstractConnection.send_packed_command = _counting_async(  # type: ignore[method-assign]
    "#count Redis commands sent", AbstractConnection.send_packed_command)

from api.main import app as _inner  # noqa: E402 - after the patches


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and scope["path"] == "/bench/timings":
        await _report(scope, send)
        return
    if scope["type"] != "http":
        await _inner(scope, receive, send)
        return
    current: dict[str, float] = {}
    token = _request.set(current)
    t0 = _perf()
    try:
        await _inner(scope, receive, send)
    finally:
        total = _perf() - t0
        _request.reset(token)
        if scope["path"].endswith("/chat/completions"):
            _samples["total (ASGI app)"].append(total)
            for name, seconds in current.items():
                _samples[name].append(seconds)
            _samples["other (routing, validation, JSON, middleware)"].append(
                total - sum(v for k, v in current.items() if not k.startswith("#")))


async def _report(scope: Scope, send: Send) -> None:
    import orjson

    if scope["method"] == "DELETE":
        _samples.clear()
        body = b"{}"
    else:
        body = orjson.dumps({k: {"n": len(v), "p50_ms": statistics.median(v) * 1e3,
                                 "mean_ms": statistics.fmean(v) * 1e3} for k, v in _samples.items() if v})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
