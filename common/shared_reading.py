"""One reading at a time, its result shared for a moment with every caller that asks meanwhile.

For what anyone may ask for without a key and costs a database connection of its own (the
readiness check, the /metrics collector): a burst of callers waits for the reading under way and
takes its result, rather than each making one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedReading(Generic[T]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._value: T | None = None

    def get(self, read: Callable[[], T], fresh_for: float) -> T:
        """The last reading if it is younger than `fresh_for` seconds, else `read()`'s (which must
        not raise: its failure is a reading too)."""
        with self._lock:
            if self._value is None or time.monotonic() - self._read_at >= fresh_for:
                self._value = read()
                self._read_at = time.monotonic()
            return self._value
