"""Under the running-jobs cap, a freed slot goes to the account's oldest job waiting for its first
run, whichever waiting job's message comes first (common.jobs.lifecycle.claim). Each waiting
job's message tries again every second, so the oldest used to start at random (a jobs review: a
Plus account's ten jobs started in the order 1, 2, 4, 8, 6, 3, 7, 5...)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text

from common import accounts, clock, ledger
from common.jobs import lifecycle, transition_sql
from common.jobs.submit import submit_job
from tests.api.chat.helpers import assert_books_balance
from tests.conftest import TEST_TZ, TestAccount, create_test_account
from workers import execute

PRICE = 200_000_000
ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _engine(db: str, request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue("engine" if db == "sqlite" else "pg_engine")


def _funded(engine: Engine, jobs: int) -> TestAccount:
    account = create_test_account(engine, "plus")
    with engine.begin() as conn:
        ledger.grant(conn, account.account_id, jobs * 2_000_000_000, now=clock.now().timestamp())
    return account


def _job(engine: Engine, account: TestAccount, job_type: str = "image") -> str:
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    params: dict[str, Any] = ({"prompt": "p", "n": 1, "width": 256, "height": 256} if job_type == "image"
                              else {"prompt": "p", "seconds": 4, "width": 1280, "height": 720})
    return submit_job(engine, principal, job_type=job_type, model="nano-banana-pro" if job_type == "image" else "vo3",
                      price=PRICE, tz=TEST_TZ, params=params).job_id


def _rows(engine: Engine, account: TestAccount) -> dict[str, tuple[str, int, float | None]]:
    with engine.connect() as conn:
        return {r.id: (r.status, r.attempts, r.enqueued_at) for r in conn.execute(
            text("SELECT id, status, attempts, enqueued_at FROM jobs WHERE account_id = :a"),
            {"a": account.account_id})}


@pytest.mark.parametrize("db", ENGINES)
def test_a_freed_slot_goes_to_the_oldest_waiting_job_and_the_newer_one_waits_for_its_message(
        db: str, request: pytest.FixtureRequest) -> None:
    engine = _engine(db, request)
    account = _funded(engine, 4)
    running, oldest, middle, newest = (_job(engine, account) for _ in range(4))
    assert lifecycle.claim(engine, running, "w1", 60, 1) is not None
    for job_id in (oldest, middle, newest):
        with pytest.raises(lifecycle.AccountBusy):  # the cap is full: each waits for a slot, as before
            lifecycle.claim(engine, job_id, "w2", 60, 1)
    assert lifecycle.requeue(engine, running, "w1", "x", "a slot frees")  # back in the queue after an error

    before = _rows(engine, account)
    claimed = lifecycle.claim(engine, newest, "w2", 60, 1)  # the newest one's message comes first
    assert claimed is not None and claimed.id == oldest, claimed
    rows = _rows(engine, account)
    assert rows[oldest][:2] == ("running", 1)
    assert rows[newest][:2] == ("queued", 0) and rows[newest][2] >= before[newest][2]  # waits, message re-sent
    assert rows[middle] == before[middle] and rows[running][:2] == ("queued", 1)  # a retried job keeps its backoff

    assert lifecycle.claim(engine, oldest, "w3", 60, 1) is None  # its own message finds it taken: a no-op
    with pytest.raises(lifecycle.AccountBusy):
        lifecycle.claim(engine, middle, "w3", 60, 1)
    assert_books_balance(engine, account.account_id, open_holds=4)


@pytest.mark.parametrize("db", ENGINES)
def test_an_older_job_whose_first_message_is_on_its_way_is_not_taken_in_its_place(
        db: str, request: pytest.FixtureRequest) -> None:
    """Without the cap's pressure every claim takes its own job: a burst of jobs, each message a
    moment behind the next one's, took older jobs in their place and sent each message again (a
    third fewer jobs/s in bench.jobs, with a cap far above the load)."""
    engine = _engine(db, request)
    account = _funded(engine, 2)
    older, newer = _job(engine, account), _job(engine, account)
    claimed = lifecycle.claim(engine, newer, "w1", 60, 10_000)
    assert claimed is not None and claimed.id == newer
    assert _rows(engine, account)[older][:2] == ("queued", 0)


@pytest.mark.parametrize("db", ENGINES)
def test_without_an_older_waiting_job_of_its_type_the_job_named_is_claimed(
        db: str, request: pytest.FixtureRequest) -> None:
    """A video waiting longer does not take an image's slot (another queue, another time limit);
    a canceled older job is no longer waiting."""
    engine = _engine(db, request)
    account = _funded(engine, 4)
    blocker = _job(engine, account)
    video, canceled, image = _job(engine, account, "video"), _job(engine, account), _job(engine, account)
    assert lifecycle.claim(engine, blocker, "w0", 60, 1) is not None
    for job_id in (video, canceled):  # both wait for a slot ...
        with pytest.raises(lifecycle.AccountBusy):
            lifecycle.claim(engine, job_id, "w0", 60, 1)
    lifecycle.cancel(engine, account.account_id, canceled)  # ... until one is canceled
    claimed = lifecycle.claim(engine, image, "w1", 60, 2)
    assert claimed is not None and claimed.id == image
    assert _rows(engine, account)[video][:2] == ("queued", 0)


def _waiting_and_fresh(engine: Engine, account: TestAccount) -> tuple[str, str]:
    """An older job the cap refused (it waits for a slot) and a newer one; the slot free again."""
    blocker, oldest, newest = _job(engine, account), _job(engine, account), _job(engine, account)
    assert lifecycle.claim(engine, blocker, "w0", 60, 1) is not None
    with pytest.raises(lifecycle.AccountBusy):
        lifecycle.claim(engine, oldest, "w0", 60, 1)
    lifecycle.cancel(engine, account.account_id, blocker)
    return oldest, newest


def _worker_at_cap_1(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """execute.run_job on `engine` with a cap of 1; the ids of the jobs it runs (not run)."""
    ran: list[str] = []
    monkeypatch.setattr(execute, "_run_claimed", lambda job, owner, requeue, notify: ran.append(job.id))
    monkeypatch.setattr(execute.context, "engine", lambda: engine)
    monkeypatch.setattr(execute.context, "settings", lambda: type("S", (), {
        "job_lease_seconds": 60, "running_jobs_for": staticmethod(lambda plan: 1), "job_max_retries": 2})())
    return ran


def test_the_worker_runs_the_older_job_and_sends_the_newer_ones_message_again(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    account = _funded(engine, 3)
    oldest, newest = _waiting_and_fresh(engine, account)
    ran = _worker_at_cap_1(engine, monkeypatch)
    sent: list[dict[str, Any]] = []
    execute.run_job(newest, requeue=lambda **kw: sent.append(kw), notify=lambda job_id: None)
    assert ran == [oldest] and sent == [{"args": (newest,), "delay": 0}]


def test_a_broker_that_cannot_take_the_message_again_leaves_the_job_to_the_sweeper(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    account = _funded(engine, 3)
    oldest, newest = _waiting_and_fresh(engine, account)
    ran = _worker_at_cap_1(engine, monkeypatch)

    def broker_down(**kwargs: Any) -> None:
        raise ConnectionError("redis is away")

    execute.run_job(newest, requeue=broker_down, notify=lambda job_id: None)
    assert ran == [oldest]  # the older job runs all the same
    assert f"job {newest} waits for a slot" in caplog.text
    assert _rows(engine, account)[newest][:2] == ("queued", 0)


@pytest.mark.parametrize("db", ENGINES)
def test_the_oldest_waiting_job_is_found_on_the_partial_index_not_the_accounts_history(
        db: str, request: pytest.FixtureRequest) -> None:
    """On ix_jobs_account_created the claim walked every job the account ever had, from its first
    (migration 0005). PostgreSQL is told to avoid table scans: an empty table is cheaper to scan."""
    engine = _engine(db, request)
    values = {"id": "job_x", "aid": "acct_x", "type": "image", "created": 1.0, "owner": "w", "until": 2.0, "now": 1.0,
              "cap": 1}  # the claim's own UPDATE reads the oldest waiting job
    with engine.begin() as conn:
        if db == "sqlite":
            plan = str(conn.execute(text("EXPLAIN QUERY PLAN " + transition_sql.CLAIM_OLDEST_UNDER_CAP.text),
                                    values).all())
        else:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = str(conn.execute(text("EXPLAIN " + transition_sql.CLAIM_OLDEST_UNDER_CAP.text), values).all())
    assert "ix_jobs_waiting" in plan, plan
