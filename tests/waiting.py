"""Waiting in tests for a state, not for a time: a bounded poll."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(condition: Callable[[], object], what: object = "never came to pass", seconds: float = 20.0,
          every: float = 0.01) -> None:
    """Return once `condition()` is true; fail with `what` (called if callable) after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(every)
