"""Autocommit psycopg connections for the hot single statements on PostgreSQL.

The chat path's reserve and settle (common.ledger_pg) and the key lookup are one statement each;
run through a SQLAlchemy Connection they cost about twice their own client CPU (isolation
switching on every checkout, rollback on return, result wrapping). This is a second engine on the
same database, in AUTOCOMMIT from the start and without the reset on return, whose pooled psycopg
connections these statements use directly. psycopg prepares each statement on the server after
its fifth use on a connection, so the steady state sends only parameters.

One per engine and process, made on first use and disposed with the engine (`engine.dispose()`).
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, cast

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Engine, TextClause, create_engine, event

from common.db import is_postgres, pg_connect_args, reader
from common.pg_liveness import replace_dropped_on_checkout

# What a statement run here raises when the database cannot be reached (see common.retrying).
UNREACHABLE: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
# Of those, the SQLSTATE classes of a server that cannot be talked to: 08 (connection exception)
# and 57P (operator intervention: shut down, crashed, not yet accepting connections). Without a
# SQLSTATE the error is the client's own (a lost socket).
UNREACHABLE_STATES = ("08", "57P")


def connection_lost(exc: BaseException) -> bool:
    """Of UNREACHABLE, a connection lost or refused, not one statement failing on a reachable
    server (a deadlock, a statement or lock timeout: psycopg calls those OperationalError too)."""
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith(UNREACHABLE_STATES)

_engines: weakref.WeakKeyDictionary[Engine, tuple[int, Engine]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@contextmanager
def connection(engine: Engine) -> Iterator[psycopg.Connection]:
    """An autocommit psycopg connection to the engine's PostgreSQL database, back to the pool after.

    A connection the database dropped is thrown away with every idle one (the server may have
    restarted), as SQLAlchemy itself does on a disconnect. The pool does not reset what it gets
    back, so a connection an error or an interrupt (Dramatiq's time limit lands at any bytecode,
    in psycopg's own bookkeeping too) left other than idle and out of pipeline mode is thrown
    away: its next user would hang on it or misread its answers."""
    statements = _statements_engine(engine)
    pooled = statements.raw_connection()
    try:
        # cast: driver_connection is typed Optional (None once invalidated); a connection just
        # checked out of this psycopg engine's pool is live and psycopg's.
        yield cast(psycopg.Connection, pooled.driver_connection)
    except UNREACHABLE as exc:
        pooled.invalidate()
        if connection_lost(exc):
            statements.dispose()
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception) or not _clean(cast(psycopg.Connection, pooled.driver_connection)):
            pooled.invalidate()
        raise
    finally:
        pooled.close()


def _clean(conn: psycopg.Connection) -> bool:
    pgconn = conn.pgconn
    return (not conn.closed and pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            and pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF)


def first_row(engine: Engine, statement: TextClause, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The first row of a one-statement read: over these connections on PostgreSQL, the engine elsewhere."""
    if not is_postgres(engine):
        with reader(engine).connect() as conn:
            row = conn.execute(statement, params).first()
        return None if row is None else tuple(row)
    with connection(engine) as conn:
        return conn.execute(psycopg_form(statement.text), params).fetchone()


def all_mappings(engine: Engine, statement: TextClause, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every row of a one-statement read as a dict: as first_row, over these connections on PostgreSQL."""
    if not is_postgres(engine):
        with reader(engine).connect() as conn:
            return [dict(row) for row in conn.execute(statement, params).mappings()]
    with connection(engine) as pg, pg.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(psycopg_form(statement.text), params).fetchall()


@lru_cache(maxsize=256)
def psycopg_form(sql: str) -> str:
    """`:name` placeholders (SQLAlchemy's) as `%(name)s` (psycopg's); `::` casts left alone."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql.replace("%", "%%"))


def _statements_engine(engine: Engine) -> Engine:
    entry = _engines.get(engine)
    if entry is not None and entry[0] == os.getpid():
        return entry[1]
    with _lock:
        entry = _engines.get(engine)
        if entry is None or entry[0] != os.getpid():
            pool = engine.pool
            size = pool.size() if hasattr(pool, "size") else 5
            # No overflow: a burst waits for one of `size` connections instead of opening (and,
            # on return, closing) extra ones, a new PostgreSQL session per request. Nothing here
            # holds one connection while asking for another, so waiting cannot deadlock.
            statements = create_engine(
                engine.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, pool_size=size,
                max_overflow=0, pool_recycle=1800, pool_timeout=10,
                connect_args=pg_connect_args(engine.url),
            )
            replace_dropped_on_checkout(statements)
            entry = _engines[engine] = (os.getpid(), statements)
            event.listen(engine, "engine_disposed", _dispose_with)
        return entry[1]


def _dispose_with(engine: Engine) -> None:
    entry = _engines.pop(engine, None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].dispose()
