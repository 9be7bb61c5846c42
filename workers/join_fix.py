"""Dramatiq's `Worker.stop(timeout)` waits for its threads with `dramatiq.common.join_all`, which
(in 2.2.1) takes the time elapsed since the start off the remaining budget again after every
thread, so the budget runs out early: with a grace of 10 s and jobs ending at 2.7 and 3.2 s, the
stop returned at 2.7 s and cut off the jobs that needed half a second more (found by a crash
drill of `helyx serve`; the same stop runs in each `helyx worker` process). Worker.stop is given
a join with one deadline for all threads, as the docstring of join_all promises.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import dramatiq.worker


def join_all(joinables: Iterable[Any], timeout: float) -> None:
    """Join each object, all within `timeout` milliseconds in total."""
    deadline = time.monotonic() + timeout / 1000
    for joinable in joinables:
        joinable.join(timeout=max(0.0, deadline - time.monotonic()))


def install() -> None:
    """Replace the join that Worker.stop uses (it imported the function by name)."""
    dramatiq.worker.join_all = join_all
