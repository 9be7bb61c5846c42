"""A job's pipelined claim and success on PostgreSQL (common.jobs.lifecycle_pg) each go in one
round trip: COMMIT travels with their statements, so the locks they take (the account's claim lock,
the account row) are held for the server's time only, never across the worker's wait for an answer
and its next turn at the GIL."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from common import billing, pg_statements
from common.jobs import lifecycle
from tests.workers.test_lifecycle_pipelined_pg import PRICE, TZ, _files, _funded, _job, _row

pytestmark = pytest.mark.postgres


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One entry each time a psycopg connection waits for the server (Connection.wait: every
    execute, fetch and pipeline sync sends and reads through it), the transaction status its
    answer left. The test clears it before the call it counts."""
    seen: list[str] = []
    wait = psycopg.Connection.wait

    def watched(conn: psycopg.Connection[Any], gen: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return wait(conn, gen, *args, **kwargs)
        finally:
            seen.append(conn.info.transaction_status.name)

    monkeypatch.setattr(psycopg.Connection, "wait", watched)
    return seen


def _warmed_up(engine: Engine, secret: str, cap: int | None) -> None:
    """A first job claimed and succeeded: the transitions' statements prepared on the connection
    (a connection's first use of each sends its PREPARE, a round trip of its own, once)."""
    job_id = _job(engine, secret)
    job = lifecycle.claim(engine, job_id, "worker-1", 30, lambda plan: cap)
    assert job is not None
    assert lifecycle.succeed(engine, job, "worker-1", _files(job_id), 3600, billing.today(TZ)) is True


@pytest.mark.parametrize("cap", [None, 4])
def test_a_claim_and_its_commit_go_in_one_round_trip(one: Engine, round_trips: list[str], cap: int | None) -> None:
    """BEGIN, the claim lock, the claim with its wait for a slot, and COMMIT go in one round trip,
    with or without a running cap: the claim lock was held for the server's time only."""
    account = _funded(one)
    _warmed_up(one, account.api_key, cap)
    job_id = _job(one, account.api_key)
    round_trips.clear()

    job = lifecycle.claim(one, job_id, "worker-1", 30, lambda plan: cap)

    assert round_trips == ["IDLE"]
    assert job is not None and job.id == job_id
    assert _row(one, job_id)["status"] == "running"


def test_a_success_and_its_commit_go_in_one_round_trip(one: Engine, round_trips: list[str]) -> None:
    """BEGIN, the settlement, the row and COMMIT go in one round trip: when its answer is in, the
    transaction is over (so the account row was held for the server's time only)."""
    account = _funded(one)
    _warmed_up(one, account.api_key, 4)
    job_id = _job(one, account.api_key)
    job = lifecycle.claim(one, job_id, "worker-1", 30, lambda plan: 4)
    assert job is not None
    round_trips.clear()

    assert lifecycle.succeed(one, job, "worker-1", _files(job_id), 3600, billing.today(TZ)) is True

    assert round_trips == ["IDLE"]
    assert _row(one, job_id) == {"status": "succeeded", "charged": PRICE, "attempts": 1, "hold": "settled",
                                 "files": 1}


def test_a_connection_s_first_transition_prepares_its_statements_once(one: Engine, round_trips: list[str]) -> None:
    """A fresh connection's first claim and success each send their statements' PREPAREs first
    (two each, a round trip apiece), then the transaction; later ones send only the transaction."""
    account = _funded(one)
    job_ids = [_job(one, account.api_key) for _ in range(2)]
    counts = []
    for job_id in job_ids:
        round_trips.clear()
        job = lifecycle.claim(one, job_id, "worker-1", 30, lambda plan: None)
        assert job is not None
        claim_trips = len(round_trips)
        round_trips.clear()
        assert lifecycle.succeed(one, job, "worker-1", _files(job_id), 3600, billing.today(TZ)) is True
        counts.append((claim_trips, len(round_trips)))

    assert counts == [(3, 3), (1, 1)]


def test_a_success_no_longer_ours_keeps_the_connection_s_prepared_statements(one: Engine,
                                                                             round_trips: list[str]) -> None:
    """Its ROLLBACK goes out of psycopg's sight (common.pg_batch.rollback): with statements of its
    own prepared on the connection, psycopg answers a ROLLBACK it sees with DEALLOCATE ALL, which
    drops the transitions' too, and the next transition pays for preparing them again."""
    account = _funded(one)
    with pg_statements.connection(one) as pg:
        for _ in range(6):  # psycopg prepares a statement of its own at its sixth use
            pg.execute("SELECT count(*) FROM jobs WHERE attempts > %s", [0])
    _warmed_up(one, account.api_key, None)
    prepared = _prepared_names(one)
    assert any(name.startswith("_pg3_") for name in prepared) and any(name.startswith("hx_") for name in prepared)
    job_id = _job(one, account.api_key)
    job = lifecycle.claim(one, job_id, "worker-1", 30, lambda plan: None)
    assert job is not None

    assert lifecycle.succeed(one, job, "someone-else", _files(job_id), 3600, billing.today(TZ)) is False

    assert _prepared_names(one) == prepared
    round_trips.clear()
    assert lifecycle.succeed(one, job, "worker-1", _files(job_id), 3600, billing.today(TZ)) is True
    assert round_trips == ["IDLE"]


def _prepared_names(engine: Engine) -> set[str]:
    with pg_statements.connection(engine) as pg:
        return {row[0] for row in pg.execute("SELECT name FROM pg_prepared_statements")}
