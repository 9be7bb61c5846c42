"""Fewer glibc malloc arenas in processes that run work on many threads.

glibc gives a new thread a malloc arena of its own while there are fewer than 8 per core, and an
arena keeps the memory it once held. A worker process runs `HELYX_WORKER_THREADS` jobs side by
side, each thread's event loop with its own executor for blocking work: 8 threads rendering images
grew a process by 21.5 MB with the default, 10 MB with two arenas, and jobs/s measured no loss
(pymalloc, not malloc, serves Python's small objects, so the arenas see little contention). Two
is the value commonly advised for threaded Python and Ruby servers.

An operator's own `MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`, wins
(glibc has applied it already); on another libc this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger("helyx.memory")
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Call before the process starts its threads: an arena already made stays. True when set."""
    if ("MALLOC_ARENA_MAX" in os.environ or "glibc.malloc.arena_max" in os.environ.get("GLIBC_TUNABLES", "")
            or platform.libc_ver()[0] != "glibc"):
        return False
    try:
        # the process's own symbols, libc's among them: find_library would run ldconfig (~17 ms a start)
        done = bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError) as exc:
        log.debug("mallopt unavailable (%s)", exc)
        return False
    return done
