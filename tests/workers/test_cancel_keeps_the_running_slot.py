"""A canceled running job keeps its account's running slot until its worker lets go: its provider
call goes on until the worker notices (at its next lease renewal), and the plan's running-job cap
bounds those calls too. Cancelling each job as it started let a cap-1 account keep seven provider
calls going at once, all free (found by a media review)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from common import accounts, clock, ledger
from common.jobs import lifecycle
from common.jobs.submit import submit_job
from tests.conftest import TestAccount, create_test_account

PRICE = 200_000_000


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue("engine" if request.param == "sqlite" else "pg_engine")


def _job(engine: Engine, account: TestAccount) -> str:
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    return submit_job(engine, principal, job_type="image", model="nano-banana-pro", price=PRICE, tz="Asia/Karachi",
                      params={"prompt": "slot", "n": 1, "width": 256, "height": 256}).job_id


def test_a_canceled_running_job_holds_its_slot_until_its_worker_lets_go(db: Engine) -> None:
    account = create_test_account(db, "free")
    with db.begin() as conn:
        ledger.grant(conn, account.account_id, 2 * PRICE, now=clock.now().timestamp())
    first, second = _job(db, account), _job(db, account)
    assert lifecycle.claim(db, first, "worker-a", 30, 1) is not None
    assert lifecycle.cancel(db, account.account_id, first) is True  # refunded at once, as before

    with pytest.raises(lifecycle.AccountBusy):  # the first job's provider call still runs
        lifecycle.claim(db, second, "worker-b", 30, 1)
    lifecycle.let_go(db, first, "worker-other")  # only its own worker frees it
    with pytest.raises(lifecycle.AccountBusy):
        lifecycle.claim(db, second, "worker-b", 30, 1)

    lifecycle.let_go(db, first, "worker-a")  # the worker noticed and stopped
    assert lifecycle.claim(db, second, "worker-b", 30, 1) is not None
    with db.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, status FROM jobs WHERE account_id = :a"),
                                 {"a": account.account_id}).all())
        open_holds = conn.execute(text("SELECT COUNT(*) FROM holds WHERE account_id = :a AND status = 'open'"),
                                  {"a": account.account_id}).scalar_one()
    assert rows == {first: "canceled", second: "running"} and open_holds == 1  # the first's hold was released


def test_a_canceled_job_whose_worker_died_frees_its_slot_when_the_lease_runs_out(db: Engine) -> None:
    account = create_test_account(db, "free")
    with db.begin() as conn:
        ledger.grant(conn, account.account_id, 2 * PRICE, now=clock.now().timestamp())
    first, second = _job(db, account), _job(db, account)
    assert lifecycle.claim(db, first, "worker-a", 30, 1) is not None
    lifecycle.cancel(db, account.account_id, first)
    with db.begin() as conn:  # the lease ran out (its worker died after the cancel)
        conn.execute(text("UPDATE jobs SET lease_until = :t WHERE id = :id"),
                     {"t": clock.now().timestamp() - 1, "id": first})
    assert lifecycle.claim(db, second, "worker-b", 30, 1) is not None


def test_a_canceled_queued_job_takes_no_slot(db: Engine) -> None:
    account = create_test_account(db, "free")
    with db.begin() as conn:
        ledger.grant(conn, account.account_id, 2 * PRICE, now=clock.now().timestamp())
    first, second = _job(db, account), _job(db, account)
    lifecycle.cancel(db, account.account_id, first)
    assert lifecycle.claim(db, second, "worker-b", 30, 1) is not None
