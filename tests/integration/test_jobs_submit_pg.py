"""On PostgreSQL a job submission by an uncapped key is one statement (hold, ledger entry and job
row): all of it is written or none of it, an Idempotency-Key replays the first job however many
submit it at once, and a refusal writes nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
from sqlalchemy import Engine, text

from common import accounts, clock, ledger
from common.accounts import Principal
from common.db import make_engine
from common.errors import Conflict, InsufficientCredits
from common.jobs import submit
from common.jobs.submit import submit_job
from common.money import MICRO
from tests.api.chat.helpers import assert_books_balance, books
from tests.conftest import TEST_TZ, TestAccount, create_test_account

TZ = TEST_TZ
T = TypeVar("T")
PARAMS = {"prompt": "a lighthouse", "n": 1, "width": 256, "height": 256}


def _principal(engine: Engine, account: TestAccount) -> Principal:
    return accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())


def _rows(engine: Engine, account_id: str) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE account_id = :a),"
            " (SELECT COUNT(*) FROM holds WHERE account_id = :a),"
            " (SELECT COUNT(*) FROM ledger_entries WHERE account_id = :a AND kind = 'reserve')"), {"a": account_id}
        ).one()  # type: ignore[return-value]


def test_a_submission_writes_the_job_its_hold_and_its_entry_together(pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "pro")
    principal = _principal(pg_engine, account)
    before = books(pg_engine, account.account_id)
    job = submit_job(pg_engine, principal, job_type="image", model="nano-banana-pro", params=PARAMS,
                     price=40 * MICRO, tz=TZ)
    with pg_engine.connect() as conn:
        row = conn.execute(text("SELECT j.status, j.price, h.amount, h.status, h.purpose FROM jobs j"
                                " JOIN holds h ON h.id = j.hold_id WHERE j.id = :id"), {"id": job.job_id}).one()
    assert tuple(row) == ("queued", 40 * MICRO, 40 * MICRO, "open", f"job:{job.job_id}")
    after = books(pg_engine, account.account_id)
    assert after.held - before.held == 40 * MICRO and after.balance == before.balance
    assert _rows(pg_engine, account.account_id) == (1, 1, 1)
    assert_books_balance(pg_engine, account.account_id, open_holds=1)


def test_a_refused_submission_writes_nothing(pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "free")
    principal = _principal(pg_engine, account)
    with pytest.raises(InsufficientCredits) as refused:
        submit_job(pg_engine, principal, job_type="image", model="nano-banana-pro", params=PARAMS,
                   price=10**9 * MICRO, tz=TZ)
    assert "resets at" in refused.value.message
    assert _rows(pg_engine, account.account_id) == (0, 0, 0)


def test_one_idempotency_key_submitted_at_once_by_many_is_one_job_charged_once(pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "ultra")
    principal = _principal(pg_engine, account)
    start = threading.Barrier(12)

    def submit() -> tuple[str, bool]:
        start.wait()
        made = submit_job(pg_engine, principal, job_type="image", model="nano-banana-pro", params=PARAMS,
                          price=40 * MICRO, tz=TZ, idempotency_key="same-key")
        return made.job_id, made.created

    results, errors = _at_once(12, submit)
    assert errors == []
    assert len({job_id for job_id, _ in results}) == 1 and sum(created for _, created in results) == 1
    assert _rows(pg_engine, account.account_id) == (1, 1, 1)
    with pg_engine.connect() as conn:
        assert ledger.balance(conn, account.account_id).held == 40 * MICRO
    with pytest.raises(Conflict):  # the same key with another body
        submit_job(pg_engine, principal, job_type="image", model="nano-banana-pro", params={**PARAMS, "n": 2},
                   price=80 * MICRO, tz=TZ, idempotency_key="same-key")


@pytest.mark.parametrize("capped", [False, True], ids=["one statement", "capped key, transactional"])
def test_duplicates_of_a_key_the_balance_covers_once_all_get_the_one_job(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch, capped: bool) -> None:
    """Duplicates that passed the replay check before the first committed found its hold had
    taken the balance: a 402 (not retryable) instead of the job that now exists (a SPEC audit)."""
    account = create_test_account(pg_engine, "free")
    if capped:
        with pg_engine.begin() as conn:
            key = accounts.create_key(conn, account.account_id, name="capped", now=clock.now().timestamp(),
                                      daily_cap=10**6 * MICRO)
        account = TestAccount(account.account_id, key.id, key.secret)
    principal = _principal(pg_engine, account)
    assert (principal.daily_cap is not None) == capped
    price = books(pg_engine, account.account_id).available  # exactly one job's worth
    first_look = submit._replay
    looked = threading.Barrier(6, timeout=20)
    waited: set[int] = set()

    def replay_then_wait(*args: object) -> object:
        found = first_look(*args)  # type: ignore[arg-type]
        if threading.get_ident() not in waited:  # every duplicate passes its first look before any reserves
            waited.add(threading.get_ident())
            looked.wait()
        return found

    monkeypatch.setattr(submit, "_replay", replay_then_wait)

    def duplicate() -> str:
        return submit_job(pg_engine, principal, job_type="image", model="nano-banana-pro",
                          params=PARAMS, price=price, tz=TZ, idempotency_key="one-only").job_id

    results, errors = _at_once(6, duplicate)
    assert errors == [] and len(results) == 6 and len(set(results)) == 1
    assert _rows(pg_engine, account.account_id) == (1, 1, 1)
    assert_books_balance(pg_engine, account.account_id, open_holds=1)


def _at_once(count: int, call: Callable[[], T]) -> tuple[list[T], list[BaseException]]:
    """`call` in `count` threads (each synchronises as it needs); what they returned and raised."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(call())
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, errors


@pytest.mark.parametrize("capped", [False, True])
def test_a_reply_lost_after_the_statement_is_an_unknown_outcome_naming_the_job(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch, capped: bool) -> None:
    """The statement (or the transaction's COMMIT) committed and its reply was lost: a retry of the
    request would make a second job (the API answers job_unconfirmed, not a 503 to retry; an SDK
    retry hunt found two jobs)."""
    import psycopg
    from sqlalchemy.engine import Connection
    from sqlalchemy.exc import OperationalError

    account = create_test_account(pg_engine, "pro")
    if capped:  # the transactional path: its COMMIT goes through, the reply does not come back
        with pg_engine.begin() as conn:
            conn.execute(text("UPDATE api_keys SET daily_cap = :c WHERE id = :k"),
                         {"c": 10_000 * MICRO, "k": account.key_id})
        real_begin = Connection.begin

        class ReplyLost:
            def __init__(self, transaction: object) -> None:
                self.transaction = transaction

            def commit(self) -> None:
                self.transaction.commit()  # type: ignore[attr-defined]
                raise OperationalError("COMMIT", {}, psycopg.OperationalError("server closed the connection"))

        def begin_with_a_lost_commit_reply(self: Connection) -> object:
            return ReplyLost(real_begin(self))

        monkeypatch.setattr(Connection, "begin", begin_with_a_lost_commit_reply)
    else:
        real_reserve = submit.ledger_pg.reserve_and_insert

        def committed_then_lost(*args: object, **kwargs: object) -> object:
            real_reserve(*args, **kwargs)  # type: ignore[arg-type]
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(submit.ledger_pg, "reserve_and_insert", committed_then_lost)
    principal = _principal(pg_engine, account)
    with pytest.raises(submit.OutcomeUnknown) as unknown:
        submit_job(pg_engine, principal, job_type="image", model="nano-banana-pro", params=PARAMS,
                   price=40 * MICRO, tz=TZ, job_id="job_0123456789abcdef01234567")
    monkeypatch.undo()
    assert unknown.value.job_id == "job_0123456789abcdef01234567"
    assert _rows(pg_engine, account.account_id) == (1, 1, 1)  # committed: unknown to the caller


@pytest.mark.parametrize("capped", [False, True])
def test_a_statement_a_reachable_server_refused_is_its_own_error_not_an_unknown_outcome(
        pg_engine: Engine, capped: bool) -> None:
    """A lock timeout (or a statement timeout, a deadlock) rolls the statement back: nothing was
    made, and the retryable 503 it was is right (a review of the first version)."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    account = create_test_account(pg_engine, "pro")
    if capped:
        with pg_engine.begin() as conn:
            conn.execute(text("UPDATE api_keys SET daily_cap = :c WHERE id = :k"),
                         {"c": 10_000 * MICRO, "k": account.key_id})
    principal = _principal(pg_engine, account)
    impatient = make_engine(pg_engine.url.update_query_dict({"options": "-c lock_timeout=200"})
                            .render_as_string(hide_password=False))
    try:
        with pg_engine.begin() as locker:
            locker.execute(text("SELECT 1 FROM accounts WHERE id = :a FOR UPDATE"), {"a": account.account_id})
            with pytest.raises((psycopg.OperationalError, OperationalError)) as refused:
                submit_job(impatient, principal, job_type="image", model="nano-banana-pro", params=PARAMS,
                           price=40 * MICRO, tz=TZ)
    finally:
        impatient.dispose()
    assert not isinstance(refused.value, submit.OutcomeUnknown)
    assert _rows(pg_engine, account.account_id) == (0, 0, 0)


def test_a_connection_that_cannot_be_had_is_the_databases_own_error(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing was sent: a retry makes nothing twice, so no unknown outcome."""
    from sqlalchemy.exc import OperationalError

    from common import pg_statements

    def unreachable(engine: Engine) -> object:
        raise OperationalError("connect", {}, Exception("connection refused"))

    account = create_test_account(pg_engine, "pro")
    principal = _principal(pg_engine, account)
    monkeypatch.setattr(pg_statements, "connection", unreachable)
    with pytest.raises(OperationalError):
        submit_job(pg_engine, principal, job_type="image", model="nano-banana-pro", params=PARAMS,
                   price=40 * MICRO, tz=TZ)
    assert _rows(pg_engine, account.account_id) == (0, 0, 0)
