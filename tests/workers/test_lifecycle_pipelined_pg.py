"""A job's claim and success on PostgreSQL go through common.jobs.lifecycle_pg (pipelined, no
SQLAlchemy statement), fall back to the general path for what it leaves to it, and whatever
happens leave no transaction open on the pooled connection (that pool does not reset them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

from common import accounts, billing, clock, ledger
from common.jobs import lifecycle
from common.jobs.submit import submit_job
from common.money import MICRO
from tests.api.chat.helpers import assert_books_balance
from tests.conftest import TEST_TZ, TestAccount, create_test_account, statements_sent
from tests.integration.races_books import open_transactions

pytestmark = pytest.mark.postgres
PRICE = 3 * MICRO
TZ = TEST_TZ


@pytest.fixture
def statements(pg_engine: Engine) -> Iterator[list[str]]:
    """The statements that went through SQLAlchemy (the general path) while the test ran."""
    with statements_sent(pg_engine) as seen:
        yield seen


def _funded(engine: Engine) -> TestAccount:
    account = create_test_account(engine, "pro")
    with engine.begin() as conn:
        ledger.grant(conn, account.account_id, 10 * PRICE, now=clock.now().timestamp())
    return account


def _job(engine: Engine, secret: str) -> str:
    principal = accounts.authenticate(engine, secret, now=clock.now().timestamp())
    return submit_job(engine, principal, job_type="image", model="nano-banana-pro", price=PRICE, tz=TZ,
                      params={"prompt": "pipelined", "n": 1, "width": 256, "height": 256}).job_id


def _files(job_id: str, file_id: str | None = None) -> list[dict[str, Any]]:
    file_id = file_id or f"file_{job_id}"
    return [{"id": file_id, "storage_key": f"acct/{job_id}/{file_id}.png", "content_type": "image/png", "bytes": 10}]


def _row(engine: Engine, job_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT j.status, j.charged, j.attempts, h.status AS hold,"
                                " (SELECT COUNT(*) FROM files f WHERE f.job_id = j.id) AS files"
                                " FROM jobs j JOIN holds h ON h.id = j.hold_id WHERE j.id = :id"), {"id": job_id})
        return dict(row.mappings().one())


def test_a_claim_and_its_success_send_no_statement_through_sqlalchemy(pg_engine: Engine,
                                                                       statements: list[str]) -> None:
    account = _funded(pg_engine)
    job_id = _job(pg_engine, account.api_key)
    before = assert_books_balance(pg_engine, account.account_id, open_holds=1)
    statements.clear()

    job = lifecycle.claim(pg_engine, job_id, "worker-1", 30, lambda plan: 4)
    assert job is not None and job.id == job_id and job.attempts == 1 and job.price == PRICE
    assert lifecycle.succeed(pg_engine, job, "worker-1", _files(job_id), 3600, billing.today(TZ)) is True

    assert statements == []
    assert _row(pg_engine, job_id) == {"status": "succeeded", "charged": PRICE, "attempts": 1, "hold": "settled",
                                       "files": 1}
    after = assert_books_balance(pg_engine, account.account_id)
    assert before.balance - after.balance == PRICE
    assert open_transactions(pg_engine) == 0


def test_a_success_after_the_job_was_canceled_writes_nothing(pg_engine: Engine) -> None:
    account = _funded(pg_engine)
    job_id = _job(pg_engine, account.api_key)
    job = lifecycle.claim(pg_engine, job_id, "worker-1", 30, lambda plan: 4)
    assert job is not None
    assert lifecycle.cancel(pg_engine, account.account_id, job_id) is True
    before = assert_books_balance(pg_engine, account.account_id)

    assert lifecycle.succeed(pg_engine, job, "worker-1", _files(job_id), 3600, billing.today(TZ)) is False

    assert _row(pg_engine, job_id) == {"status": "canceled", "charged": 0, "attempts": 1, "hold": "released",
                                       "files": 0}
    assert assert_books_balance(pg_engine, account.account_id) == before
    assert open_transactions(pg_engine) == 0


def test_a_capped_key_s_job_settles_through_the_general_path(pg_engine: Engine, statements: list[str]) -> None:
    """The one-statement settlement leaves capped holds to the general ledger: the pipelined
    transaction rolls back (its job row with it) and the general path does it all, once."""
    account = _funded(pg_engine)
    with pg_engine.begin() as conn:
        key = accounts.create_key(conn, account.account_id, name="capped", now=clock.now().timestamp(),
                                  daily_cap=5 * PRICE)
    job_id = _job(pg_engine, key.secret)
    before = assert_books_balance(pg_engine, account.account_id, open_holds=1)
    job = lifecycle.claim(pg_engine, job_id, "worker-1", 30, lambda plan: 4)
    assert job is not None
    statements.clear()

    assert lifecycle.succeed(pg_engine, job, "worker-1", _files(job_id), 3600, billing.today(TZ)) is True

    assert statements  # the general path ran
    assert _row(pg_engine, job_id) == {"status": "succeeded", "charged": PRICE, "attempts": 1, "hold": "settled",
                                       "files": 1}
    after = assert_books_balance(pg_engine, account.account_id)
    assert before.balance - after.balance == PRICE
    with pg_engine.connect() as conn:
        kinds = [r[0] for r in conn.execute(text("SELECT kind FROM ledger_entries WHERE hold_id = :h ORDER BY id"),
                                            {"h": job.hold_id})]
    assert kinds == ["reserve", "settle"]
    assert open_transactions(pg_engine) == 0


def test_a_statement_that_fails_mid_pipeline_rolls_back_and_leaves_the_connection_clean(pg_engine: Engine) -> None:
    """A file id already taken fails the success's INSERT: nothing of it is written, the job is
    still running under its lease, and the pooled connection goes back with no transaction open
    (the next transitions on the pool work)."""
    account = _funded(pg_engine)
    first, second = _job(pg_engine, account.api_key), _job(pg_engine, account.api_key)
    one = lifecycle.claim(pg_engine, first, "worker-1", 30, lambda plan: 4)
    two = lifecycle.claim(pg_engine, second, "worker-2", 30, lambda plan: 4)
    assert one is not None and two is not None
    assert lifecycle.succeed(pg_engine, one, "worker-1", _files(first, "file_taken"), 3600, billing.today(TZ))

    with pytest.raises(psycopg.errors.UniqueViolation):
        lifecycle.succeed(pg_engine, two, "worker-2", _files(second, "file_taken"), 3600, billing.today(TZ))

    assert _row(pg_engine, second) == {"status": "running", "charged": 0, "attempts": 1, "hold": "open", "files": 0}
    assert open_transactions(pg_engine) == 0
    for _ in range(3):  # every pooled connection it could have been
        assert lifecycle.renew(pg_engine, second, "worker-2", 30)
    assert lifecycle.succeed(pg_engine, two, "worker-2", _files(second), 3600, billing.today(TZ)) is True
    assert _row(pg_engine, second)["status"] == "succeeded"
    assert_books_balance(pg_engine, account.account_id)


def test_a_claim_refused_by_the_cap_waits_for_a_slot_and_says_busy(pg_engine: Engine, statements: list[str]) -> None:
    account = _funded(pg_engine)
    running, waiting = _job(pg_engine, account.api_key), _job(pg_engine, account.api_key)
    assert lifecycle.claim(pg_engine, running, "worker-1", 30, lambda plan: 1) is not None
    statements.clear()

    with pytest.raises(lifecycle.AccountBusy):
        lifecycle.claim(pg_engine, waiting, "worker-2", 30, lambda plan: 1)

    assert statements == []
    with pg_engine.connect() as conn:
        row = conn.execute(text("SELECT status, attempts, lease_owner, enqueued_at > created_at AS waits"
                                " FROM jobs WHERE id = :id"), {"id": waiting}).mappings().one()
    assert dict(row) == {"status": "queued", "attempts": 0, "lease_owner": None, "waits": True}
    assert open_transactions(pg_engine) == 0


def test_an_error_of_our_own_mid_pipeline_is_raised_as_itself_and_writes_nothing(pg_engine: Engine) -> None:
    """The running cap's function fails between the pipeline's statements (an unknown plan): its
    own error comes out (not a database error, which would be retried as an outage), the claim's
    transaction is rolled back, and the next claim on the pool works."""
    account = _funded(pg_engine)
    job_id = _job(pg_engine, account.api_key)

    def unknown_plan(plan: str) -> int:
        raise KeyError(plan)

    with pytest.raises(KeyError):
        lifecycle.claim(pg_engine, job_id, "worker-1", 30, unknown_plan)

    assert _row(pg_engine, job_id) == {"status": "queued", "charged": 0, "attempts": 0, "hold": "open", "files": 0}
    assert open_transactions(pg_engine) == 0
    job = lifecycle.claim(pg_engine, job_id, "worker-1", 30, lambda plan: 4)
    assert job is not None and job.attempts == 1
