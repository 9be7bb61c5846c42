"""Who runs the jobs of a PostgreSQL database: one self-contained `helyx serve`, or the production
shape's `helyx worker` processes; never both, and never two serves.

A self-contained serve takes up every unfinished job as it starts (workers.embedded), so one
started by mistake beside another serve, or beside the production workers, would take their
running jobs from under them: each provider call made twice, and the file written to its own
storage directory, where the other deployment cannot serve it. A file lock cannot see a process
with another storage directory or on another host; the database can.

A session-level advisory lock (PostgreSQL scopes it to the database): the serve takes it
exclusively, each worker process shared, on a connection kept open for the process's life and
named after the process and its host, so a refusal can say who holds it. PostgreSQL drops the lock
when that session ends, however the process ends (a SIGKILL leaves nothing stale); for a host that
died or a network cut, the session's keepalives (set here: about a minute, not the server's
default two hours) end it. An idle-session timeout would end it too, so it is switched off for this
session. A PostgreSQL restart ends the session as well, and the lock is not taken again until the
process restarts (README, Command line).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

import psycopg

from common.db import libpq_conninfo, pg_connect_args_of_conninfo

# Below 2**31, so pg_locks shows it as objid with classid 0.
LOCK_KEY = 1_214_606_680
# A process that just ended released its lock, but PostgreSQL drops it only as that session's backend
# exits, a moment after the client closed it: a restart, or the next holder in a test, saw it still taken.
RELEASE_GRACE_SECONDS = 1.0
_SESSION = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3,
            "idle_session_timeout": 0}


class JobsTaken(Exception):
    """Another process runs this database's jobs."""


def hold(database_url: str, *, shared: bool, holder: str) -> psycopg.Connection[Any]:
    """The lock, held while the returned connection stays open. Raises JobsTaken, naming the
    holders, when it cannot be had at once."""
    conn = psycopg.connect(libpq_conninfo(database_url), autocommit=True,
                           application_name=f"{holder} (pid {os.getpid()} on {socket.gethostname()})"[:63],
                           **pg_connect_args_of_conninfo(libpq_conninfo(database_url)))
    for setting, value in _SESSION.items():  # the server's side of the same watch; a setting it lacks is skipped
        with contextlib.suppress(psycopg.Error):
            conn.execute(f"SET {setting} = {value}")
    take = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    deadline = time.monotonic() + RELEASE_GRACE_SECONDS
    while not _took(conn, take):
        if time.monotonic() >= deadline:
            holders = _holders(conn)
            conn.close()
            raise JobsTaken(", ".join(holders) or "another process")
        time.sleep(0.05)
    return conn


def _took(conn: psycopg.Connection[Any], take: str) -> bool:
    row = conn.execute(f"SELECT {take}(%s::bigint)", (LOCK_KEY,)).fetchone()
    return row is not None and bool(row[0])


def _holders(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT DISTINCT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " ORDER BY 1", (LOCK_KEY,)).fetchall()
    return [r[0] for r in rows if r[0]]
