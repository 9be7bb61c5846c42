"""A job's pipelined claim and success on PostgreSQL (common.jobs.lifecycle_pg) each go in one
round trip: COMMIT travels with their statements, so the locks they take (the account's claim lock,
the account row) are held for the server's time only, never across the worker's wait for an answer
and its next turn at the GIL."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from common import billing
from common.jobs import lifecycle
from tests.workers.test_lifecycle_pipelined_pg import PRICE, TZ, _files, _funded, _job, _row

pytestmark = pytest.mark.postgres


@pytest.fixture
def status_after_each_round_trip(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One entry each time psycopg's pipeline has fetched answers (after a Sync, or a fetch that
    flushed what was sent so far): one per round trip, each the transaction status that the
    server's last Sync answer reported (a fetch without a Sync does not change it)."""
    seen: list[str] = []
    fetch = psycopg.Pipeline._fetch_gen

    def watched(pipeline: psycopg.Pipeline, *, flush: bool) -> Any:
        waiting = bool(pipeline.result_queue)
        yield from fetch(pipeline, flush=flush)
        if waiting:
            seen.append(pipeline._conn.info.transaction_status.name)

    monkeypatch.setattr(psycopg.Pipeline, "_fetch_gen", watched)
    return seen


@pytest.mark.parametrize("cap", [None, 4])
def test_a_claim_and_its_commit_go_in_one_round_trip(pg_engine: Engine, status_after_each_round_trip: list[str],
                                                     cap: int | None) -> None:
    """BEGIN, the claim lock, the claim, the wait for a slot and COMMIT go in one sync, with or
    without a running cap: the claim lock was held for the server's time only."""
    account = _funded(pg_engine)
    job_id = _job(pg_engine, account.api_key)

    job = lifecycle.claim(pg_engine, job_id, "worker-1", 30, lambda plan: cap)

    assert job is not None and job.id == job_id
    assert status_after_each_round_trip == ["IDLE"]
    assert _row(pg_engine, job_id)["status"] == "running"


def test_a_success_and_its_commit_go_in_one_round_trip(pg_engine: Engine,
                                                       status_after_each_round_trip: list[str]) -> None:
    """BEGIN, the settlement, the row and COMMIT go in one sync: when its answers are in, the
    transaction is over (so the account row was held for the server's time only)."""
    account = _funded(pg_engine)
    job_id = _job(pg_engine, account.api_key)
    job = lifecycle.claim(pg_engine, job_id, "worker-1", 30, lambda plan: 4)
    assert job is not None
    status_after_each_round_trip.clear()

    assert lifecycle.succeed(pg_engine, job, "worker-1", _files(job_id), 3600, billing.today(TZ)) is True

    assert status_after_each_round_trip == ["IDLE"]
    assert _row(pg_engine, job_id) == {"status": "succeeded", "charged": PRICE, "attempts": 1, "hold": "settled",
                                       "files": 1}
