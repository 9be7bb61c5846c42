"""Riding out a short database outage (a restart or failover) for writes that must not be lost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from common import pg_async, pg_statements

log = logging.getLogger(__name__)
T = TypeVar("T")
# Annotated: mypy infers tuple[type, ...] for a tuple spliced with *, which `except` and isinstance cannot use.
DATABASE_DOWN: Final[tuple[type[Exception], ...]] = (
    OperationalError, InterfaceError, PoolTimeout, pg_async.PoolTimeout, *pg_statements.UNREACHABLE)


def is_unreachable(exc: BaseException) -> bool:
    """Of DATABASE_DOWN, whether the database itself could not be reached or answered (a lost or
    refused connection, a full pool, a stalled server), rather than one statement failing on a
    reachable server (a deadlock, a statement timeout, a full disk: psycopg puts those under
    OperationalError too, and they want a traceback, not an "unavailable" line)."""
    if isinstance(exc, (PoolTimeout, pg_async.PoolTimeout)):
        return True
    cause = getattr(exc, "orig", None) or exc
    if not isinstance(cause, DATABASE_DOWN):
        return False
    return pg_statements.connection_lost(cause)


def while_database_down(fn: Callable[..., T], *args: object, patience: float = 60.0, max_delay: float = 5.0) -> T:
    """`fn(*args)`, retried with backoff (up to `max_delay` between tries) while the database is
    unreachable, for up to `patience` seconds. Only for idempotent writes: a retry after a commit
    whose reply was lost must be a no-op (our ledger verbs and job transitions are conditional
    updates, so it is)."""
    delay, deadline = min(0.25, max_delay), time.monotonic() + patience
    while True:
        try:
            return fn(*args)
        except DATABASE_DOWN as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("database unavailable (%s); retrying %s", type(exc).__name__, getattr(fn, "__name__", fn))
            time.sleep(delay)
            delay = min(delay * 2, max_delay)


async def while_database_down_async(fn: Callable[[], Awaitable[T]], *, patience: float = 60.0,
                                    max_delay: float = 5.0) -> T:
    """`while_database_down` for a coroutine on the event loop (common.pg_async). Each try is
    bounded by the patience left, so the whole lasts about `patience`: checked between tries only,
    one try on a stalled database ran its own statement deadline plus psycopg's cancellation wait
    (a settlement's 15 s became 20-28 s under load). A try cut short by it raises
    pg_async.StatementTimeout: whether its statement ran is unknown, as after any lost reply."""
    delay, deadline = min(0.25, max_delay), time.monotonic() + patience
    while True:
        try:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    return await fn()
            except TimeoutError:
                raise pg_async.StatementTimeout(f"no answer from the database within {patience:g} s") from None
        except DATABASE_DOWN as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("database unavailable (%s); retrying %s", type(exc).__name__, getattr(fn, "__name__", fn))
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
