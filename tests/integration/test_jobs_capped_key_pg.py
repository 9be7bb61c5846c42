"""On PostgreSQL, refunding jobs of a capped key (cancel) while the same key reserves and settles
never deadlocks: every path takes the key row before the account row."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, text

from common import accounts, billing, clock
from common.errors import NotFound
from common.jobs import lifecycle
from common.jobs.submit import submit_job
from common.money import MICRO
from tests.conftest import TEST_TZ, create_test_account

TZ = TEST_TZ


def test_cancels_and_capped_reserves_on_one_key_race_without_deadlock(pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "ultra")
    with pg_engine.begin() as conn:
        key = accounts.create_key(conn, account.account_id, name="capped", now=clock.now().timestamp(),
                                  daily_cap=20_000 * MICRO)
    principal = accounts.authenticate(pg_engine, key.secret, now=clock.now().timestamp())
    jobs = [submit_job(pg_engine, principal, job_type="image", model="nano-banana-pro",
                       params={"prompt": f"p{i}", "n": 1, "width": 256, "height": 256}, price=10 * MICRO,
                       tz=TZ).job_id for i in range(60)]
    errors: list[BaseException] = []

    def cancel_all() -> None:
        try:
            for job_id in jobs:
                lifecycle.cancel(pg_engine, account.account_id, job_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def reserve_and_settle() -> None:
        try:
            for _ in range(40):
                hold = billing.reserve(pg_engine, account_id=account.account_id, key_id=key.id, amount=5 * MICRO,
                                       purpose="race", ttl=60, tz=TZ, capped=True)
                billing.settle(pg_engine, hold, 2 * MICRO)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=cancel_all)] + [threading.Thread(target=reserve_and_settle) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert errors == []
    with pg_engine.connect() as conn:
        balance = conn.execute(text("SELECT allowance + topup, held FROM accounts WHERE id = :a"),
                               {"a": account.account_id}).one()
        entries = conn.execute(text("SELECT SUM(amount), SUM(held_delta) FROM ledger_entries WHERE account_id = :a"),
                               {"a": account.account_id}).one()
        cap_used = conn.execute(text("SELECT cap_used FROM api_keys WHERE id = :k"), {"k": key.id}).scalar_one()
        canceled = conn.execute(text("SELECT COUNT(*) FROM jobs WHERE status = 'canceled'")).scalar_one()
    assert canceled == len(jobs)
    assert (balance[0], balance[1]) == (entries[0], entries[1]) and balance[1] == 0
    assert cap_used == 6 * 40 * 2 * MICRO  # refunds and unused hold parts were all given back


def test_canceling_another_accounts_job_takes_no_lock_of_that_accounts_key(pg_engine: Engine) -> None:
    """The refund's lock on the job's key row (the ledger's order: key, then account) was taken
    before the job was found to be another account's: a caller naming someone else's job id locked
    that account's key row until its 404 (a security review)."""
    victim, caller = create_test_account(pg_engine, "ultra"), create_test_account(pg_engine, "ultra")
    principal = accounts.authenticate(pg_engine, victim.api_key, now=clock.now().timestamp())
    job_id = submit_job(pg_engine, principal, job_type="image", model="nano-banana-pro",
                        params={"prompt": "p", "n": 1, "width": 256, "height": 256}, price=10 * MICRO, tz=TZ).job_id
    with pg_engine.connect() as holder:
        holder.execute(text("SET lock_timeout = '5s'"))
        holder.execute(text("SELECT 1 FROM api_keys WHERE id = :k FOR UPDATE"), {"k": principal.key_id})
        outcome: list[BaseException | None] = []

        def cancel_as_the_other_account() -> None:
            try:
                lifecycle.cancel(pg_engine, caller.account_id, job_id)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcome.append(exc)

        worker = threading.Thread(target=cancel_as_the_other_account)
        worker.start()
        worker.join(3)  # the victim's key row stays locked meanwhile
        answered = not worker.is_alive()
        holder.rollback()
        worker.join(10)
    assert answered, "the cancel waited for the other account's key row"
    assert len(outcome) == 1 and isinstance(outcome[0], NotFound)
    with pytest.raises(NotFound):
        lifecycle.cancel(pg_engine, caller.account_id, job_id)
    assert lifecycle.cancel(pg_engine, victim.account_id, job_id)  # its owner's cancel still works
