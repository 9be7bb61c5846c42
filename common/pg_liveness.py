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

import psycopg
from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

_DEAD = select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL


def dropped_by_server(pgconn: Any) -> bool:
    """True when the idle connection's socket has something to read or is unusable (psycopg's
    `PGconn`). poll(), not select(): select() cannot take a descriptor above 1023, which a busy
    process reaches."""
    try:
        fd = pgconn.socket
    except psycopg.OperationalError:  # a closed PGconn has no socket
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(events & _DEAD for _, events in poller.poll(0))


def replace_dropped_on_checkout(engine: Engine) -> None:
    """A SQLAlchemy PostgreSQL engine's pool opens a new connection in place of one the server
    closed while it sat idle (the pool retries a checkout that raises DisconnectionError)."""

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dropped_by_server(dbapi_connection.pgconn):
            raise DisconnectionError("the server closed this pooled connection")
