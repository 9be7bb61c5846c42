"""A Dramatiq worker process acts on the first SIGTERM (or SIGHUP) only.

Dramatiq's worker-process handler stops gracefully on the first signal and exits at once on the
second, leaving its running jobs `running` until their lease lapses. Under a process-group stop
(honcho's `killpg`, systemd's control-group SIGTERM) every worker process gets the signal twice:
once directly and once passed on by Dramatiq's main process, so the graceful stop never happened.
Here a repeat is ignored; a stop that must be harder is SIGKILL, which is what honcho and systemd
send after their own timeout.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("helyx.worker")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
Handler = Callable[[int, FrameType | None], object]


def ignore_repeated_stops() -> bool:
    """Wrap Dramatiq's worker-process handler (installed before our modules are imported) so it
    sees only the first stop signal. Does nothing outside a Dramatiq worker process (the API,
    `helyx serve`, tests); returns whether it wrapped."""
    current = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not _is_dramatiqs(current):
        return False
    dramatiq_handler: Handler = current  # type: ignore[assignment]
    stopping = told = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping, told
        if not stopping:
            stopping = True
            dramatiq_handler(signum, frame)
        elif not told:
            told = True
            log.info("already stopping: %s ignored, running jobs finish first", signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is current:
            signal.signal(sig, handler)
    return True


def _is_dramatiqs(handler: object) -> bool:
    """dramatiq.cli's worker_process.termhandler; if a Dramatiq release renames it, we wrap nothing
    and its own behaviour stands (tests/integration/test_worker_supervision.py then fails)."""
    return callable(handler) and getattr(handler, "__module__", None) == "dramatiq.cli" \
        and getattr(handler, "__name__", None) == "termhandler"
