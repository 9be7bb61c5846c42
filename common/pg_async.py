"""Autocommit psycopg connections on the event loop, for the API's hot single statements.

The API's per-request statements (key lookup, reserve, settle, a job poll) are one autocommit
statement each (common.pg_statements, common.ledger_pg). Sent from the thread pool, each one
also paid a trip there and back; at 64 concurrent requests that trip cost about 4x the
statement's own client CPU, mostly in threads contending for the GIL. Here the same statements
run on psycopg's async connections, on the loop that serves the request.

The pool is deliberately minimal and fails fast, as the thread path's SQLAlchemy pool does:
a connection is opened when a request needs one and none is idle (a refused connect is an
immediate error, so a request during a database outage gets its 503 at once), a connection the
database dropped is thrown away together with every idle one, and a request waits at most
`timeout` for a free slot. psycopg_pool was the first choice and was not taken: it reconnects
in the background with a backoff that starts at 1 s and doubles, and makes waiting requests
wait for it, so an outage turns into slow timeouts and the recovery lags by seconds.
SQLAlchemy's async engine has the right pool but needs greenlet and, measured at 64 concurrent
statements, costs twice the client CPU of this one per statement.

One per API process and event loop: made in the app's lifespan, closed when it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from sqlalchemy import Engine, TextClause

from common.db import is_postgres, libpq_conninfo, pg_connect_args_of_conninfo
from common.pg_liveness import dropped_by_server
from common.pg_statements import UNREACHABLE, psycopg_form


class PoolTimeout(Exception):
    """Every connection stayed busy for the whole wait: the database is too slow to keep up."""


class StatementTimeout(PoolTimeout):
    """A statement got no answer within STATEMENT_SECONDS: the database is stalled (frozen, or cut
    off by the network). A 503, as a database that cannot be reached; the statement may still
    have run (an unflushed reservation then lapses at its expiry; a settlement is tried again)."""


STATEMENT_SECONDS = 10.0  # the longest a statement here may take, its connection's checkout included
# How often the deadlines are looked at. A statement past its deadline is cancelled; psycopg then
# asks the server to cancel it and waits up to 5 s (10 s when the cancel request itself goes
# unanswered) before it gives the connection up: a stalled statement ends within about 16-21 s.
WATCH_SECONDS = 1.0


class _InFlight:
    """One statement under way: the task that waits for it, and when it must have finished."""

    __slots__ = ("deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any] | None, deadline: float) -> None:
        self.task, self.deadline, self.expired = task, deadline, False


class AsyncStatements:
    def __init__(self, conninfo: str, size: int, *, timeout: float = 10.0, recycle: float = 1800.0,
                 statement_seconds: float | None = None) -> None:
        self.conninfo = conninfo
        self._connect_args = pg_connect_args_of_conninfo(conninfo)
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[psycopg.AsyncConnection[Any], float]] = []  # (connection, opened at); LIFO
        self._timeout = timeout
        self._recycle = recycle
        self._statement_seconds = STATEMENT_SECONDS if statement_seconds is None else statement_seconds
        self._in_flight: set[_InFlight] = set()
        self._watch: asyncio.TimerHandle | None = None

    @classmethod
    def for_engine(cls, engine: Engine) -> AsyncStatements | None:
        """A pool on the engine's PostgreSQL database, as large as the engine's; None on SQLite."""
        if not is_postgres(engine):
            return None
        size = engine.pool.size() if hasattr(engine.pool, "size") else 5
        return cls(libpq_conninfo(engine.url), size)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """An autocommit connection, back to the pool after, unless the database dropped it."""
        if self._slots.locked():  # a deadline only when there is a wait (it costs as much as a statement's send)
            try:
                async with asyncio.timeout(self._timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise PoolTimeout(f"no database connection free within {self._timeout} s") from None
        else:
            await self._slots.acquire()  # returns at once
        flight = _InFlight(asyncio.current_task(), time.monotonic() + self._statement_seconds)
        self._in_flight.add(flight)
        self._watch_deadlines()
        try:
            conn, opened = await self._checkout()
            try:
                yield conn
            except UNREACHABLE:
                await _close(conn)
                await self.close_idle()  # the server may have restarted: the idle ones are dead too
                raise
            finally:
                if not conn.closed:
                    if conn.info.transaction_status == TransactionStatus.IDLE:
                        self._idle.append((conn, opened))
                    else:  # interrupted mid-statement (a cancelled task): its state is unknown
                        await _close(conn)
        except asyncio.CancelledError:
            if flight.expired and flight.task is not None:  # our own cancellation: the deadline passed
                flight.task.uncancel()
                raise StatementTimeout(f"no answer from the database within {self._statement_seconds:g} s") from None
            raise
        finally:
            self._in_flight.discard(flight)
            self._slots.release()

    def _watch_deadlines(self) -> None:
        """The deadlines are kept by one timer per pool, not one per statement: asyncio.timeout()
        around each statement cost ~6 us, against 0.1 us to note the statement here. A statement
        past its deadline has its task cancelled, which `connection()` turns into StatementTimeout."""
        if self._watch is None and self._in_flight:
            self._watch = asyncio.get_running_loop().call_later(WATCH_SECONDS, self._expire_overdue)

    def _expire_overdue(self) -> None:
        self._watch = None
        now = time.monotonic()
        for flight in list(self._in_flight):
            if not flight.expired and flight.deadline <= now and flight.task is not None:
                flight.expired = True
                flight.task.cancel()
        self._watch_deadlines()

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    async def first_row(self, statement: TextClause, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        async with self.connection() as conn:
            cursor = await conn.execute(psycopg_form(statement.text), params)
            return await cursor.fetchone()

    async def all_mappings(self, statement: TextClause, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(psycopg_form(statement.text), params)
            return await cursor.fetchall()

    async def close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await _close(conn)

    async def _checkout(self) -> tuple[psycopg.AsyncConnection[Any], float]:
        now = time.monotonic()
        while self._idle:
            conn, opened = self._idle.pop()
            if not conn.closed and now - opened < self._recycle and not dropped_by_server(conn.pgconn):
                return conn, opened
            await _close(conn)
        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, **self._connect_args)
        return conn, now


async def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close it even from a cancelled task: anyio re-cancels every await in a cancelled scope."""
    with suppress(Exception):
        await asyncio.shield(conn.close())
