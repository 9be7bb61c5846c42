"""What the self-contained `helyx serve` checks before its workers start.

At start it takes up every job its database left unfinished (SPEC §5), so a second instance on
the same database would take the first one's running jobs from under it (each such start uses
up an attempt of every running job), and one that then failed to bind its port would have done
so for nothing. Hence, before any worker starts: an exclusive lock on the database (a file beside
a SQLite file; on PostgreSQL, common.jobs_lock, which the production workers hold shared), and
the listening socket bound.
"""

from __future__ import annotations

import fcntl
import os
import socket
from typing import TYPE_CHECKING, Any, TextIO

from common.serve_lock import AlreadyServing, lock_path, locked_file, pg_lock, share_database, shown_url
from common.settings import Settings

if TYPE_CHECKING:
    import psycopg

BACKLOG = 2048  # uvicorn's default
__all__ = ["AlreadyServing", "bind", "claim_database", "lock_path", "share_database"]


def claim_database(settings: Settings) -> TextIO | psycopg.Connection[Any]:
    """The exclusive lock, held while the returned object (a context manager) stays open. Released
    when the process ends, however it ends (a SIGKILL leaves no stale lock behind)."""
    shown = shown_url(settings)
    if not settings.is_sqlite:
        return pg_lock(settings, shared=False, holder="helyx serve",
                       refusal=f"another process is already running the jobs of this database ({shown})")
    handle, had = locked_file(settings, fcntl.LOCK_EX)
    if not had:
        try:  # had shared, the holders are production-shape API processes (which write no pid)
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            holder = "a production-shape `helyx serve`"
        except BlockingIOError:
            handle.seek(0)
            holder = f"another `helyx serve` (pid {handle.read().strip() or 'unknown'})"
        handle.close()
        raise AlreadyServing(f"{holder} is already running on this database ({shown}); stop it first, or give "
                             "this one its own HELYX_DATABASE_URL and HELYX_STORAGE_DIR")
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound and listening now, for uvicorn to serve on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening now, not when uvicorn starts: with SO_REUSEADDR a second process may bind the
        # same address as long as nobody listens on it, and would then fail only later, silently.
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise AlreadyServing(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
