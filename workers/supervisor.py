"""Keeps one command running: `helyx worker` runs Dramatiq's CLI under it.

Dramatiq's main process stops every worker process and exits 1 as soon as one of them dies (a
SIGKILL, the OOM killer); under honcho that would stop the whole deployment, API included, and
leave nobody to reclaim the dead process's jobs. So a non-zero exit we did not ask for is met
with a restart after a backoff (the restarted workers' sweeper reclaims the jobs once their lease
lapses). SIGTERM or SIGINT is passed on exactly once (Dramatiq's main process passes it to its
workers, which finish their running jobs); then we wait for the command and exit with its code.
SIGHUP is passed on and we stay (Dramatiq's main process reloads itself, under the same pid).

On Linux the command gets SIGTERM if the supervisor itself dies (SIGKILL, the OOM killer): it
then stops as on any SIGTERM, rather than go on unsupervised (under honcho, whose pipe its
processes still hold, nobody would notice and nobody would restart it after its next crash).

On Linux the supervisor is a child subreaper: when Dramatiq's main process dies alone (SIGKILL,
the OOM killer), its worker processes are handed to us rather than to init. Before a restart
they are stopped (SIGTERM: they finish their running job; SIGKILL after the grace), so a restart
never leaves a second set of workers consuming beside the new one.

    python -m workers.supervisor [--log-level INFO] -- python -m dramatiq ...

Stdlib plus our log set-up only: this process lives as long as the workers and holds nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from common import logs
from common.parent_death import stop_with

log = logging.getLogger("helyx.supervisor")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
ORPHAN_GRACE_SECONDS = 30.0  # the workers' own shutdown timeout is the same by default


@dataclass
class Backoff:
    """The pause before each restart: `first`, doubling up to `most`; back to `first` after a run
    that lasted `reset_after` seconds (a crash then is news, not the same crash looping)."""

    first: float = 1.0
    most: float = 30.0
    reset_after: float = 60.0
    _next: float = field(default=0.0, init=False)

    def after(self, uptime: float) -> float:
        if not self._next or uptime >= self.reset_after:
            self._next = self.first
        delay = self._next
        self._next = min(self.most, delay * 2)
        return delay


class Supervisor:
    """Runs `argv` until it exits 0 or we are asked to stop; see the module docstring."""

    def __init__(self, argv: Sequence[str], backoff: Backoff | None = None,
                 orphan_grace: float = ORPHAN_GRACE_SECONDS) -> None:
        self.argv = list(argv)
        self.orphan_grace = orphan_grace
        self.name = " ".join([Path(argv[0]).name, *argv[1:3]])  # "python -m dramatiq"
        self.backoff = backoff or Backoff()
        self.stopping: signal.Signals | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._signalled: subprocess.Popen[bytes] | None = None  # the child the stop went to

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_stop) for sig in STOP_SIGNALS}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hup)
        _become_subreaper()
        try:
            return self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self) -> int:
        while not self.stopping:
            started = time.monotonic()
            # preexec_fn is safe here: this process runs no other thread
            self._child = subprocess.Popen(self.argv, preexec_fn=_stop_with(os.getpid()))
            self._forward()  # a stop that came while it was starting
            code = self._child.wait()
            self._stop_orphans()
            if self.stopping or code == 0:
                return code if code >= 0 else 128 - code
            delay = self.backoff.after(time.monotonic() - started)
            log.warning("%s exited with code %d; starting it again in %g s", self.name, code, delay)
            deadline = time.monotonic() + delay
            while not self.stopping and (left := deadline - time.monotonic()) > 0:
                time.sleep(min(0.1, left))
        return 0  # stopped between two runs: nothing is running

    def _stop_orphans(self) -> None:
        """Worker processes left behind by a main process that died alone (handed to us as the
        subreaper): SIGTERM (they finish their job), SIGKILL after the grace; all reaped."""
        orphans = _children(os.getpid())
        if not orphans:
            return
        log.warning("stopping %d process(es) left behind by %s: %s", len(orphans), self.name, orphans)
        _signal_all(orphans, signal.SIGTERM)
        deadline = time.monotonic() + self.orphan_grace
        while (orphans := _reap(orphans)) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_all(orphans, signal.SIGKILL)
        while _reap(orphans):
            time.sleep(0.05)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            log.info("already stopping; %s not passed on again", signal.Signals(signum).name)
            return
        self.stopping = signal.Signals(signum)
        self._forward()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        child = self._child
        if child is not None and not self.stopping:
            child.send_signal(signal.SIGHUP)

    def _forward(self) -> None:
        """Pass the stop to the current child, once (from the handler or right after a start)."""
        child = self._child
        if self.stopping and child is not None and child is not self._signalled:
            self._signalled = child
            child.send_signal(self.stopping)  # a no-op once it has been reaped


def _stop_with(parent: int) -> Callable[[], None]:
    """For the child, before it runs the command: SIGTERM when `parent` dies (Linux only)."""
    def arm() -> None:
        # Until exec, the fork runs our handlers, which would swallow a SIGTERM: the default first.
        for sig in (*STOP_SIGNALS, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if not stop_with(parent):  # it died before the signal was armed: none will come
            os._exit(128 + signal.SIGTERM)
    return arm


def _become_subreaper() -> None:
    """Linux only; elsewhere (or refused) orphans go to init as before."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("not a child subreaper here")


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, exited ones not yet reaped included (from /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.parent.name))
    return found


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(pids: list[int]) -> list[int]:
    """Collect whichever of `pids` (our children) have exited; the ones still running."""
    running = []
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if not done:
            running.append(pid)
    return running


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.supervisor")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args(args)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("no command to supervise")
    logs.configure(options.log_level)
    return Supervisor(command).run()


if __name__ == "__main__":
    sys.exit(main())
