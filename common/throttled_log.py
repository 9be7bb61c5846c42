"""A warning that repeats at most once per interval for the same cause.

A provider or Redis outage fails every request the same way; one line per failure would flood
the log (and cost the event loop a formatted record each time) at hundreds of requests a second.
The first failure of a cause is logged at once; the next ones within the interval are counted and
the count goes out with the next line after it."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import ClassVar


class ThrottledWarnings:
    _all: ClassVar[weakref.WeakSet[ThrottledWarnings]] = weakref.WeakSet()

    def __init__(self, logger: logging.Logger, every_seconds: float = 10.0) -> None:
        self._logger = logger
        self._every = every_seconds
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()  # the workers' threads share one
        ThrottledWarnings._all.add(self)

    @classmethod
    def forget_all(cls) -> None:
        """Every cause may be logged again at once (for tests, each of which expects its own lines)."""
        for throttled in list(cls._all):
            with throttled._lock:
                throttled._last.clear()
                throttled._held.clear()

    def warning(self, cause: str, message: str, *args: object) -> None:
        """Log `message % args` unless a line for `cause` went out less than the interval ago."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(cause, -self._every) < self._every:
                self._held[cause] = self._held.get(cause, 0) + 1
                return
            self._last[cause] = now
            held = self._held.pop(cause, 0)
        if held:
            message += f" ({held} more like it since the last such line)"
        self._logger.warning(message, *args)
