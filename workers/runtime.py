"""Per worker thread: one event loop, one pooled HTTP client and one set of provider adapters,
kept across jobs. Building an httpx client costs ~20 ms of CPU (its SSL context) and a fresh loop
a few more; a job should not pay that every time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import dramatiq
import httpx

from common.catalog import Catalog, load_catalog
from common.providers.http import build_http_client
from common.providers.registry import Providers
from common.settings import Settings
from workers import context

T = TypeVar("T")
_local = threading.local()
_catalogs: dict[int, tuple[Settings, Catalog]] = {}


class ThreadRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runner = asyncio.Runner()
        self._http: httpx.AsyncClient | None = None
        self._providers: Providers | None = None

    def providers(self) -> Providers:
        """Built inside this thread's loop on first use (the client binds to the loop)."""
        if self._providers is None:
            self._http = build_http_client(self.settings.upstream_connect_timeout,
                                           self.settings.upstream_read_timeout)
            self._providers = Providers(catalog(self.settings), self.settings, self._http)
        return self._providers

    def close(self) -> None:
        """Close the HTTP client's connections inside the loop that owns them, then the loop."""
        if self._http is not None:
            self.runner.run(self._http.aclose())
        self.runner.close()

    def run(self, make: Callable[[ThreadRuntime], Coroutine[Any, Any, T]]) -> T:
        return self.runner.run(make(self))


def current() -> ThreadRuntime:
    """This thread's runtime, rebuilt when the settings changed (tests reconfigure)."""
    settings = context.settings()
    runtime: ThreadRuntime | None = getattr(_local, "runtime", None)
    if runtime is None or runtime.settings is not settings:
        if runtime is not None:
            runtime.close()
        runtime = _local.runtime = ThreadRuntime(settings)
    return runtime


def catalog(settings: Settings) -> Catalog:
    """The catalog of these settings, loaded once. The entry keeps its settings object: an id()
    alone is reused once an object is freed, and a test's new settings then got an earlier test's
    catalog (its fake upstream long gone: every call refused)."""
    entry = _catalogs.get(id(settings))
    if entry is None or entry[0] is not settings:
        entry = _catalogs[id(settings)] = (settings, load_catalog(settings))
    return entry[1]


def close_current() -> None:
    """Close this thread's runtime, if it has one (its HTTP connections, then its loop)."""
    runtime: ThreadRuntime | None = getattr(_local, "runtime", None)
    _local.runtime = None
    if runtime is not None:
        runtime.close()


class CloseRuntimeOnThreadShutdown(dramatiq.Middleware):
    """A stopping worker thread closes its runtime itself: its HTTP client's connections belong to
    the thread's own loop, and left to the garbage collector they are reported unclosed."""

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        close_current()
