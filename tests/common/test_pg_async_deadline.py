"""The API's statements on the event loop (common.pg_async) end within their deadline when the
database stops answering on a connection already open: a frozen server, or a network that drops
packets silently. They waited for ever (an operator review: /readyz, /metrics, GET /jobs and chat
hung; a chat its client had given up on ran and was charged once the database came back)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from common import pg_async
from common.db import libpq_conninfo, normalize_url
from common.pg_async import AsyncStatements, PoolTimeout, StatementTimeout
from tests.fakes.freezable_proxy import freezable_proxy

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
SELECT_1 = text("SELECT 1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_statement_to_a_database_gone_silent_ends_in_a_statement_timeout(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_async, "WATCH_SECONDS", 0.1)
    url = make_url(normalize_url(pg_url))
    with freezable_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        pool = AsyncStatements(libpq_conninfo(url.set(host="127.0.0.1", port=proxy.port)), 2, statement_seconds=0.5)
        assert await pool.first_row(SELECT_1, {}) == (1,)  # a connection open and idle in the pool
        proxy.frozen.set()
        started = time.monotonic()
        with pytest.raises(StatementTimeout) as stalled:
            await pool.first_row(SELECT_1, {})
        waited = time.monotonic() - started
        assert isinstance(stalled.value, PoolTimeout)  # a database that cannot be reached: the API's 503
        # past the deadline, psycopg itself waits up to 5 s for the query's cancellation before it
        # gives the connection up: the bound is the deadline plus that (and each half is bounded)
        assert 0.5 <= waited < 9, waited
        assert pool.idle_count == 0  # the stalled connection is not handed out again
        proxy.frozen.clear()
        assert await pool.first_row(SELECT_1, {}) == (1,)
        await pool.close_idle()


async def test_a_statement_that_answers_in_time_is_left_alone(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_async, "WATCH_SECONDS", 0.05)
    pool = AsyncStatements(libpq_conninfo(pg_url), 2, statement_seconds=1.0)
    # a connection open first: the deadline counts from checkout, and a slow connect to a busy server is not the point
    assert await pool.first_row(SELECT_1, {}) == (1,)
    assert await pool.first_row(text("SELECT 2 FROM pg_sleep(0.3)"), {}) == (2,)  # several watches pass meanwhile
    assert pool.idle_count == 1
    await pool.close_idle()


async def test_a_retried_write_on_a_stalled_database_ends_within_its_patience(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The patience was checked between tries only, and one try on a stalled database ran its
    statement deadline plus psycopg's cancellation wait: a settlement's 15 s became 20-28 s under
    load (a load test with a frozen database)."""
    from common.retrying import while_database_down_async

    monkeypatch.setattr(pg_async, "WATCH_SECONDS", 0.1)
    url = make_url(normalize_url(pg_url))
    with freezable_proxy(url.host or "127.0.0.1", url.port or 5432, refuse_new_when_frozen=False) as proxy:
        pool = AsyncStatements(libpq_conninfo(url.set(host="127.0.0.1", port=proxy.port)), 2, statement_seconds=1.0)
        assert await pool.first_row(SELECT_1, {}) == (1,)
        proxy.frozen.set()
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await while_database_down_async(lambda: pool.first_row(SELECT_1, {}), patience=2.5, max_delay=0.1)
        waited = time.monotonic() - started
        assert 2.5 <= waited < 4, waited  # (without the bound: 1 s, then psycopg's 5-10 s, then more tries)
        proxy.frozen.clear()
        assert await pool.first_row(SELECT_1, {}) == (1,)
        await pool.close_idle()
