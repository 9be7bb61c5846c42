"""The SQLAlchemy engines on a real server (common.db.make_engine, and the autocommit statements
engine of common.pg_statements): a pooled connection whose session the server ended while it sat
idle (a restart, a failover, an idle timeout) is replaced at checkout, so the next statement
succeeds instead of failing once per dead connection; a live one is kept, also when its socket's
descriptor is above 1023 (which select() cannot take)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text

from common import pg_statements
from common.db import make_engine

pytestmark = pytest.mark.postgres

PID = text("SELECT pg_backend_pid()")


def _terminate(admin_engine: Engine, pids: list[int]) -> None:
    with admin_engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(p, 5000) FROM unnest(CAST(:p AS int[])) AS p"), {"p": pids})


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url, pool_size=2)
    yield engine
    engine.dispose()


def test_a_pooled_connection_the_server_ended_is_replaced_at_checkout(engine: Engine, pg_engine: Engine) -> None:
    with engine.connect() as first, engine.connect() as second:  # two connections into the pool
        pids = [first.execute(PID).scalar_one(), second.execute(PID).scalar_one()]
    _terminate(pg_engine, pids)
    for _ in range(2):  # each dead one would have failed a statement
        with engine.connect() as conn:
            assert conn.execute(PID).scalar_one() not in pids
    with engine.begin() as conn:  # a transaction too
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


def test_the_statements_engine_replaces_one_too(engine: Engine, pg_engine: Engine) -> None:
    row = pg_statements.first_row(engine, PID, {})
    assert row is not None
    _terminate(pg_engine, [row[0]])
    again = pg_statements.first_row(engine, PID, {})  # no error
    assert again is not None and again[0] != row[0]


def test_a_live_connection_is_kept_when_its_descriptor_is_above_1023(engine: Engine) -> None:
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # the next sockets get high numbers
    try:
        with engine.connect() as conn:
            fd, pid = conn.connection.dbapi_connection.pgconn.socket, conn.execute(PID).scalar_one()  # type: ignore[union-attr]
        assert fd > 1023
        for _ in range(3):
            with engine.connect() as conn:
                assert conn.execute(PID).scalar_one() == pid  # the same session, not a new one each time
    finally:
        for fd in held:
            os.close(fd)


def _pooled_pids(engine: Engine, count: int) -> set[int]:
    """Check `count` statements connections out at once and give them back: their backends' pids."""
    with contextlib.ExitStack() as stack:
        connections = [stack.enter_context(pg_statements.connection(engine)) for _ in range(count)]
        return {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in connections}  # type: ignore[index]


@pytest.mark.parametrize(("error", "pool_kept"), [
    (psycopg.errors.DeadlockDetected("deadlock detected"), True),  # 40P01: the server answered
    (psycopg.errors.LockNotAvailable("lock timeout"), True),  # 55P03
    (psycopg.OperationalError("the connection was lost"), False),  # no SQLSTATE: the client's own
    (psycopg.errors.AdminShutdown("terminating connection"), False),  # 57P01
])
def test_a_statement_s_error_throws_away_its_connection_but_the_pool_only_when_the_server_is_gone(
        engine: Engine, error: Exception, pool_kept: bool) -> None:
    pids = _pooled_pids(engine, 2)
    with pytest.raises(type(error)), pg_statements.connection(engine):
        raise error
    assert _pooled_pids(engine, 1) <= pids if pool_kept else not _pooled_pids(engine, 2) & pids


def test_an_interrupt_throws_away_the_connection_it_held(engine: Engine) -> None:
    """Dramatiq's time limit may land inside psycopg's own bookkeeping: that connection is never reused."""
    with pytest.raises(KeyboardInterrupt), pg_statements.connection(engine) as pg:
        pid = pg.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        raise KeyboardInterrupt
    assert pid not in _pooled_pids(engine, 2)
