"""The lock a self-contained `helyx serve` holds exclusively on its database (cli.single_instance)
and the production shape's API holds shared: a file beside a SQLite file; on PostgreSQL,
common.jobs_lock's advisory lock, which the production workers hold shared too."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sqlalchemy.engine import make_url

from common import jobs_lock
from common.db import DatabaseUnusable
from common.settings import Settings
from common.settings import shown_url as settings_shown_url

if TYPE_CHECKING:
    import psycopg


class AlreadyServing(Exception):
    """Another `helyx serve` holds this database, or the port is taken."""


def lock_path(settings: Settings) -> Path:
    """Beside the SQLite file (an in-memory database: in the storage directory)."""
    database = make_url(settings.database_url).database
    if database and database != ":memory:":
        return Path(database + ".serve.lock")
    return settings.storage_dir / ".serve.lock"


def share_database(settings: Settings) -> TextIO | psycopg.Connection[Any]:
    """The serve lock, shared, while the returned object stays open: held by a production-shape
    `helyx serve` and by every API process of the production shape (api.app's lifespan), so that a
    self-contained serve, which releases every open chat hold and takes up every unfinished job as
    it starts, cannot start beside them (it released the holds of an API's calls under way, which
    were then answered free; held by the serve's parent alone, its API processes went on without it
    once that parent was killed)."""
    shown = shown_url(settings)
    if not settings.is_sqlite:
        return pg_lock(settings, shared=True, holder="helyx serve (production shape)",
                       refusal=f"a self-contained `helyx serve` runs this database ({shown})")
    handle, had = locked_file(settings, fcntl.LOCK_SH)
    if not had:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise AlreadyServing(f"a self-contained `helyx serve` (pid {holder}) runs this database ({shown}); "
                             "stop it first, or give this one its own HELYX_DATABASE_URL")
    return handle


def locked_file(settings: Settings, mode: int) -> tuple[TextIO, bool]:
    """The SQLite database's lock file, open, and whether `mode` (fcntl.LOCK_SH or LOCK_EX) was had at
    once. The kernel drops the lock with the process, however it ends."""
    path = lock_path(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")
    except OSError as exc:  # a file where a directory of the path should be, no permission: one line, not a traceback
        raise DatabaseUnusable(f"the serve lock beside the SQLite file, {path}, cannot be made: "
                               f"{exc.strerror or exc}") from exc
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return handle, False
    return handle, True


def shown_url(settings: Settings) -> str:
    """The database URL for a message: no password, in its user part or in its query."""
    return settings_shown_url(make_url(settings.database_url).render_as_string(hide_password=True))


def pg_lock(settings: Settings, *, shared: bool, holder: str, refusal: str) -> psycopg.Connection[Any]:
    """common.jobs_lock's advisory lock on a PostgreSQL database; AlreadyServing (`refusal`, with
    the holders named) when it cannot be had within jobs_lock's grace for a holder just ended (1 s)."""
    try:
        return jobs_lock.hold(settings.database_url, shared=shared, holder=holder)
    except jobs_lock.JobsTaken as exc:
        raise AlreadyServing(f"{refusal}: {exc}; stop it first, or give this one its own HELYX_DATABASE_URL") from None
