"""A child process that ends with its parent (Linux's PR_SET_PDEATHSIG; elsewhere, nothing).

A supervisor killed with SIGKILL cannot stop its children: `helyx worker`'s Dramatiq processes,
and `helyx serve --workers N`'s uvicorn worker processes, would run on unsupervised, the latter
keeping the port, so that the next `helyx serve` could not start. Each such child asks the
kernel for a SIGTERM (a graceful stop) when its parent dies.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with(parent: int) -> bool:
    """SIGTERM this process when `parent` dies. False when `parent` is already gone (then no
    signal will come: the caller should stop now); True otherwise, also where the kernel offers
    no such signal."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return True
    return os.getppid() == parent
