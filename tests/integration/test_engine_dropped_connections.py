"""The SQLAlchemy engine (common.db.make_engine) on a real server: a pooled connection whose
session the server ended while it sat idle (a restart, a failover, an idle timeout) is replaced
at checkout, so the next statement succeeds instead of failing once per dead connection."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from common.db import make_engine

pytestmark = pytest.mark.postgres

PID = text("SELECT pg_backend_pid()")


def test_a_pooled_connection_the_server_ended_is_replaced_at_checkout(pg_url: str, pg_engine: Engine) -> None:
    engine = make_engine(pg_url, pool_size=2)
    try:
        with engine.connect() as first, engine.connect() as second:  # two connections into the pool
            pids = [first.execute(PID).scalar_one(), second.execute(PID).scalar_one()]
        with pg_engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(p, 5000) FROM unnest(CAST(:p AS int[])) AS p"),
                          {"p": pids})
        for _ in range(2):  # each dead one would have failed a statement
            with engine.connect() as conn:
                assert conn.execute(PID).scalar_one() not in pids
        with engine.begin() as conn:  # a transaction too
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
