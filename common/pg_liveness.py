"""Is an idle PostgreSQL connection still alive? A check that costs no round trip.

When the server ends a session (a restart, a failover, `pg_terminate_backend`, an idle timeout)
it sends a FATAL error and closes the socket, so a pooled connection's socket turns readable
while it sits idle. An idle autocommit connection has nothing else to read (Helyx never LISTENs),
so a readable socket at checkout means the connection is dead, or at worst holds a stray notice:
either way it is thrown away and a fresh one is opened. Without this check the first request on
each dead pooled connection failed with a 503 after every database restart.

A server that vanished without closing the socket (a cut network) is not seen here; the statement
then fails as before, and the pools throw away their idle connections with it.
"""

from __future__ import annotations

import select
from typing import Any


def dropped_by_server(pgconn: Any) -> bool:
    """True when the idle connection's socket has something to read or is unusable (psycopg's
    `PGconn`)."""
    try:
        readable, _, _ = select.select([pgconn.socket], [], [], 0)
    except Exception:  # noqa: BLE001 - a closed PGconn raises (psycopg's OperationalError) instead of a socket
        return True
    return bool(readable)
