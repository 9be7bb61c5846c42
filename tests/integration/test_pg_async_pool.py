"""The event loop's PostgreSQL pool (common.pg_async) on a real server: connections are reused,
at most `size` are in use, an idle connection the server ended is replaced at checkout without an
error, a connection dropped in use is thrown away with the idle ones, a
refused connect fails at once, and a statement interrupted by cancellation is cancelled on the
server and gives its slot back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text

from common.pg_async import AsyncStatements, PoolTimeout
from common.pg_statements import UNREACHABLE

pytestmark = pytest.mark.postgres

PID = text("SELECT pg_backend_pid()")


@pytest.fixture
def conninfo(pg_engine: Engine) -> Iterator[str]:
    pool = AsyncStatements.for_engine(pg_engine)
    assert pool is not None
    yield pool.conninfo  # the same URL the API's pool gets


def _pid(pool: AsyncStatements) -> int:
    async def run() -> int:
        row = await pool.first_row(PID, {})
        assert row is not None
        return int(row[0])
    return asyncio.run(run())


def test_a_connection_is_reused_and_the_pool_never_exceeds_its_size(conninfo: str) -> None:
    async def scenario() -> None:
        pool = AsyncStatements(conninfo, 2, timeout=0.3)
        first = await pool.first_row(PID, {})
        assert await pool.first_row(PID, {}) == first  # the idle connection again
        async with pool.connection(), pool.connection():  # both slots taken
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                async with pool.connection():
                    pass
            assert 0.25 < time.monotonic() - started < 2
        rows = await asyncio.gather(*(pool.first_row(PID, {}) for _ in range(10)))
        assert len(set(rows)) <= 2
        await pool.close_idle()
    asyncio.run(scenario())


def _terminate(engine: Engine, pids: list[int]) -> None:
    """The server ends these sessions (as a restart would) and waits until they are gone."""
    with engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(p, 5000) FROM unnest(CAST(:p AS int[])) AS p"), {"p": pids})


def test_an_idle_connection_the_server_ended_is_replaced_at_checkout(conninfo: str, pg_engine: Engine) -> None:
    async def scenario() -> None:
        pool = AsyncStatements(conninfo, 3)
        async with pool.connection() as a, pool.connection() as b:
            pids = [(await (await c.execute("SELECT pg_backend_pid()")).fetchone())[0] for c in (a, b)]  # type: ignore[index]
        _terminate(pg_engine, pids)
        row = await pool.first_row(PID, {})  # no error: the dead idle ones are seen and passed over
        assert row is not None and row[0] not in pids
        assert pool.idle_count == 1  # the fresh one; both dead ones were closed
        await pool.close_idle()
    asyncio.run(scenario())


def test_a_connection_dropped_in_use_is_discarded_with_every_idle_one(conninfo: str, pg_engine: Engine) -> None:
    async def scenario() -> None:
        pool = AsyncStatements(conninfo, 3)
        async with pool.connection() as a, pool.connection() as b:
            pids = [(await (await c.execute("SELECT pg_backend_pid()")).fetchone())[0] for c in (a, b)]  # type: ignore[index]
        assert pool.idle_count == 2
        with pytest.raises(UNREACHABLE):
            async with pool.connection() as conn:
                _terminate(pg_engine, pids)  # dropped after the checkout's check
                await conn.execute("SELECT 1")
        assert pool.idle_count == 0  # the other dead one went too, unused
        row = await pool.first_row(PID, {})  # a fresh connection serves at once
        assert row is not None and row[0] not in pids
        await pool.close_idle()
    asyncio.run(scenario())


def test_a_refused_connect_fails_at_once() -> None:
    async def scenario() -> None:
        pool = AsyncStatements("postgresql://postgres@127.0.0.1:1/test", 2)
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            await pool.first_row(PID, {})
        assert time.monotonic() - started < 1
        async with asyncio.timeout(1):  # its slot was given back
            with pytest.raises(psycopg.OperationalError):
                await pool.first_row(PID, {})
    asyncio.run(scenario())


def test_a_cancelled_statement_frees_its_slot_and_leaves_nothing_running(conninfo: str, pg_engine: Engine) -> None:
    async def scenario() -> None:
        pool = AsyncStatements(conninfo, 1)
        sleeper = asyncio.create_task(pool.first_row(text("SELECT pg_sleep(30)"), {}))
        await asyncio.sleep(0.3)
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
        async with asyncio.timeout(2):  # the one slot is free again, on a usable connection
            assert await pool.first_row(text("SELECT 1"), {}) == (1,)
        await pool.close_idle()
    asyncio.run(scenario())
    with pg_engine.connect() as conn:
        running = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
                                    " AND state = 'active'")).scalar_one()
    assert running == 0


def test_a_connection_past_its_recycle_age_is_replaced(conninfo: str) -> None:
    async def scenario() -> None:
        pool = AsyncStatements(conninfo, 1, recycle=0.0)
        first = await pool.first_row(PID, {})
        assert await pool.first_row(PID, {}) != first
        await pool.close_idle()
    asyncio.run(scenario())
