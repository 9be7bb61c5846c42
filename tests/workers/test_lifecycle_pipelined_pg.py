"""A job's claim and success on PostgreSQL go through common.jobs.lifecycle_pg (pipelined, no
SQLAlchemy statement), fall back to the general path for what it leaves to it, and whatever
happens leave no transaction open on the pooled connection (that pool does not reset them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

from common import accounts, billing, clock, ledger
from common.jobs import lifecycle, lifecycle_pg
from common.jobs.submit import submit_job
from common.money import MICRO
from common.plans import daily_allowance_micro
from tests.api.chat.helpers import Books, assert_books_balance, books
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


def _job(engine: Engine, secret: str, price: int = PRICE) -> str:
    principal = accounts.authenticate(engine, secret, now=clock.now().timestamp())
    return submit_job(engine, principal, job_type="image", model="nano-banana-pro", price=price, tz=TZ,
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


def _owner_and_kinds(engine: Engine, job_id: str) -> tuple[str | None, list[str]]:
    """The job's lease owner, and the kinds of its hold's ledger rows in order."""
    with engine.connect() as conn:
        owner = conn.execute(text("SELECT lease_owner FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()
        kinds = [r[0] for r in conn.execute(text("SELECT e.kind FROM ledger_entries e JOIN jobs j ON j.hold_id ="
                                                 " e.hold_id WHERE j.id = :id ORDER BY e.id"), {"id": job_id})]
    return owner, kinds


def _pipelined_answers(engine: Engine, monkeypatch: pytest.MonkeyPatch, statements: list[str], account_id: str,
                       job_id: str) -> list[tuple[bool | None, Books, dict[str, Any]]]:
    """What each pipelined success (common.jobs.lifecycle_pg.succeed) answered, with the books and
    the job as it left them, before common.jobs.lifecycle.succeed acts on the answer (these reads
    are not counted in `statements`)."""
    seen: list[tuple[bool | None, Books, dict[str, Any]]] = []
    pipelined = lifecycle_pg.succeed

    def watched(*args: Any, **kwargs: Any) -> bool | None:
        done = pipelined(*args, **kwargs)
        sent = len(statements)
        seen.append((done, books(engine, account_id), _row(engine, job_id)))
        del statements[sent:]
        return done

    monkeypatch.setattr(lifecycle_pg, "succeed", watched)
    return seen


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
    transaction commits nothing (its row statement leaves the job row alone) and the general path
    does it all, once."""
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
    """The running cap's function fails (an unknown plan): its own error comes out (not a database
    error, which would be retried as an outage), nothing is written, and the next claim on the
    pool works. (Its caps are all asked before the claim's pipeline opens.)"""
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


def test_a_late_success_of_a_job_another_worker_claimed_again_is_rolled_back_and_charges_nothing(
        pg_engine: Engine, statements: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled worker's lease lapsed and another worker claimed the job again, its hold still
    open. The stalled worker's settlement (sent first) settles the hold inside the transaction and
    its job row's update then matches nothing: all of it is rolled back, False, decided in the
    pipeline. The job goes on under the new worker, whose success charges it once."""
    account = _funded(pg_engine)
    job_id = _job(pg_engine, account.api_key)
    stalled = lifecycle.claim(pg_engine, job_id, "stalled-worker", 0.05, lambda plan: 4)
    assert stalled is not None
    time.sleep(0.1)  # its lease lapses
    again = lifecycle.claim(pg_engine, job_id, "worker-2", 30, lambda plan: 4)
    assert again is not None and again.attempts == 2 and again.hold_id == stalled.hold_id
    before = assert_books_balance(pg_engine, account.account_id, open_holds=1)
    answers = _pipelined_answers(pg_engine, monkeypatch, statements, account.account_id, job_id)
    statements.clear()

    assert lifecycle.succeed(pg_engine, stalled, "stalled-worker", _files(job_id, "file_stalled"), 3600,
                             billing.today(TZ)) is False

    running = {"status": "running", "charged": 0, "attempts": 2, "hold": "open", "files": 0}
    assert answers == [(False, before, running)]
    assert statements == []  # the general path had nothing to do
    assert _row(pg_engine, job_id) == running
    assert _owner_and_kinds(pg_engine, job_id) == ("worker-2", ["reserve"])
    assert assert_books_balance(pg_engine, account.account_id, open_holds=1) == before
    assert open_transactions(pg_engine) == 0

    assert lifecycle.succeed(pg_engine, again, "worker-2", _files(job_id), 3600, billing.today(TZ)) is True
    assert _row(pg_engine, job_id) == {"status": "succeeded", "charged": PRICE, "attempts": 2, "hold": "settled",
                                       "files": 1}
    assert _owner_and_kinds(pg_engine, job_id) == (None, ["reserve", "settle"])
    assert before.balance - assert_books_balance(pg_engine, account.account_id).balance == PRICE


@pytest.mark.parametrize("case", ["allowance deficit", "day change"])
def test_a_success_the_one_statement_settlement_stands_aside_for_writes_nothing_then_is_written_once(
        pg_engine: Engine, statements: list[str], monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """The settlement's statement locks and settles nothing for an account with an allowance
    deficit (a downgrade under the job's hold) or whose allowance is still an earlier billing
    day's (the reset is lazy): the row statement after it leaves the job row alone (None, nothing
    written), and the general path does it all once (for a day change, the new day's reset first:
    the charge comes out of the new day's allowance)."""
    today = billing.today(TZ)
    if case == "allowance deficit":
        account, price, day = create_test_account(pg_engine, "ultra"), 2_000 * MICRO, today
        job_id = _job(pg_engine, account.api_key, price)
        with pg_engine.begin() as conn:  # 2,000 held on a 1,000-a-day plan: 1,000 of deficit
            ledger.change_plan(conn, account.account_id, "free", today, now=clock.now().timestamp())
        allowance_after = 0
    else:
        account, price, day = _funded(pg_engine), PRICE, (date.fromisoformat(today) + timedelta(days=1)).isoformat()
        with pg_engine.begin() as conn:  # some of today's allowance spent: tomorrow's must pay
            spent = ledger.reserve(conn, account_id=account.account_id, key_id=None, amount=700 * MICRO,
                                   purpose="t", now=clock.now().timestamp(), ttl=600)
            ledger.settle(conn, spent, 700 * MICRO, now=clock.now().timestamp())
        job_id = _job(pg_engine, account.api_key)
        allowance_after = daily_allowance_micro("pro") - PRICE
    job = lifecycle.claim(pg_engine, job_id, "worker-1", 30, lambda plan: 4)
    assert job is not None
    before = assert_books_balance(pg_engine, account.account_id, open_holds=1)
    answers = _pipelined_answers(pg_engine, monkeypatch, statements, account.account_id, job_id)
    statements.clear()

    assert lifecycle.succeed(pg_engine, job, "worker-1", _files(job_id), 3600, day) is True

    assert answers == [(None, before, {"status": "running", "charged": 0, "attempts": 1, "hold": "open",
                                       "files": 0})]
    assert statements  # the general path ran
    assert _row(pg_engine, job_id) == {"status": "succeeded", "charged": price, "attempts": 1, "hold": "settled",
                                       "files": 1}
    assert _owner_and_kinds(pg_engine, job_id) == (None, ["reserve", "settle"])
    after = assert_books_balance(pg_engine, account.account_id)
    with pg_engine.connect() as conn:
        allowance_day = conn.execute(text("SELECT allowance_day FROM accounts WHERE id = :a"),
                                     {"a": account.account_id}).scalar_one()
    assert (after.allowance, allowance_day) == (allowance_after, day)
    assert open_transactions(pg_engine) == 0


_SETTING_SEEN = """
CREATE TABLE helyx_test_commit_setting (status text, setting text, backend integer);
CREATE FUNCTION helyx_test_commit_setting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO helyx_test_commit_setting
        VALUES (NEW.status, current_setting('synchronous_commit'), pg_backend_pid());
    RETURN NEW;
END $$;
CREATE TRIGGER helyx_test_commit_setting BEFORE UPDATE ON jobs FOR EACH ROW
    EXECUTE FUNCTION helyx_test_commit_setting();
"""


def test_a_claim_commits_without_waiting_for_its_flush_and_the_success_after_it_waits(pg_engine: Engine) -> None:
    """The claim's lock statement sets synchronous_commit off for the claim's own transaction
    (set_config's `true`): the job's success, next on the same pooled connection, commits waiting
    for its flush (which covers the claim's too)."""
    account = _funded(pg_engine)
    job_id = _job(pg_engine, account.api_key)
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(_SETTING_SEEN)
    try:
        job = lifecycle.claim(pg_engine, job_id, "worker-1", 30, lambda plan: 4)
        assert job is not None
        assert lifecycle.succeed(pg_engine, job, "worker-1", _files(job_id), 3600, billing.today(TZ)) is True
        with pg_engine.connect() as conn:
            seen = conn.execute(text("SELECT status, setting, backend FROM helyx_test_commit_setting")).all()
    finally:
        with pg_engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER helyx_test_commit_setting ON jobs;"
                                 " DROP FUNCTION helyx_test_commit_setting(); DROP TABLE helyx_test_commit_setting")
    assert [(status, setting) for status, setting, _ in seen] == [("running", "off"), ("succeeded", "on")]
    assert len({backend for *_, backend in seen}) == 1  # one connection: the setting ended with the claim


def test_a_success_whose_hold_the_sweeper_expired_writes_nothing_in_the_pipeline(
        pg_engine: Engine, statements: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The hold of a job still running under its lease expired (the sweeper released it): the
    settlement stands aside, the pipelined transaction commits nothing (None; the job row is not
    written without a settlement of this very transaction: a hold no longer open is no sign of one),
    and the general path records the success once, charging nothing (no hold left to charge)."""
    account = _funded(pg_engine)
    job_id = _job(pg_engine, account.api_key)
    job = lifecycle.claim(pg_engine, job_id, "worker-1", 30, lambda plan: 4)
    assert job is not None
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE holds SET expires_at = 0 WHERE id = :h"), {"h": job.hold_id})
    assert billing.expire_holds(pg_engine) == 1
    before = assert_books_balance(pg_engine, account.account_id)
    answers = _pipelined_answers(pg_engine, monkeypatch, statements, account.account_id, job_id)
    statements.clear()

    assert lifecycle.succeed(pg_engine, job, "worker-1", _files(job_id), 3600, billing.today(TZ)) is True

    assert answers == [(None, before, {"status": "running", "charged": 0, "attempts": 1, "hold": "expired",
                                       "files": 0})]
    assert statements  # the general path ran
    assert _row(pg_engine, job_id) == {"status": "succeeded", "charged": 0, "attempts": 1, "hold": "expired",
                                       "files": 1}
    assert _owner_and_kinds(pg_engine, job_id) == (None, ["reserve", "expire"])
    assert assert_books_balance(pg_engine, account.account_id) == before
    assert open_transactions(pg_engine) == 0
