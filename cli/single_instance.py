"""What the self-contained `helyx serve` checks before its workers start.

At start it takes up every job its database left unfinished (SPEC §5), so a second instance on
the same database would take the first one's running jobs from under it (each such start uses
up an attempt of every running job), and one that then failed to bind its port would have done
so for nothing. Hence, before any worker starts: an exclusive lock beside the database, and the
listening socket bound.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url

from common.settings import Settings

BACKLOG = 2048  # uvicorn's default


class AlreadyServing(Exception):
    """Another `helyx serve` holds this database, or the port is taken."""


def lock_path(settings: Settings) -> Path:
    """Beside the SQLite file; for a PostgreSQL database, in the storage directory."""
    if settings.is_sqlite:
        database = make_url(settings.database_url).database
        if database and database != ":memory:":
            return Path(database + ".serve.lock")
    return settings.storage_dir / ".serve.lock"


def claim_database(settings: Settings) -> IO[str]:
    """The exclusive lock, held while the returned file stays open. The kernel releases it when
    the process ends, however it ends (a SIGKILL leaves no stale lock behind)."""
    path = lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise AlreadyServing(f"another `helyx serve` (pid {holder}) is already running on this database "
                             f"({settings.database_url}); stop it first, or give this one its own "
                             "HELYX_DATABASE_URL and HELYX_STORAGE_DIR") from None
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
