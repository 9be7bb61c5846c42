"""Plan changes and grants meeting open holds and settlements, and a key's daily cap reserved
from both sides of midnight at once, on PostgreSQL (an adversarial review's interleavings)."""

# ruff: noqa: B023 - the closures run (and are joined) inside their own loop iteration
from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, text

from common import accounts, billing, clock, ledger, retrying
from common.errors import InsufficientCredits
from common.money import MICRO
from common.plans import daily_allowance_micro
from tests.conftest import TEST_TZ, create_test_account
from tests.integration.races_books import assert_books, run_threads

pytestmark = pytest.mark.postgres
TZ = TEST_TZ


def test_plan_changes_and_grants_racing_reservations_and_settlements_keep_the_books(pg_engine: Engine) -> None:
    """Four threads reserve and settle (one-statement and transactional verbs, some charging in full,
    some in part, some releasing) while one moves the plan up and down and one grants; the books
    balance throughout, nothing goes negative, and at the end the allowance is what the plan's day
    less what was spent of it says, the deficit all taken back."""
    account = create_test_account(pg_engine, "plus")
    aid = account.account_id
    stop = threading.Event()
    spent_lock = threading.Lock()
    spent = [0]
    errors: list[BaseException] = []

    def spender(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                amount = rng.randint(1, 400) * MICRO
                try:
                    hold = billing.reserve(pg_engine, account_id=aid, key_id=None, amount=amount, purpose="test:x",
                                           ttl=60, tz=TZ, capped=rng.random() < 0.3)
                except InsufficientCredits:
                    continue
                time.sleep(rng.random() / 200)
                kind = rng.random()
                charge = 0 if kind < 0.3 else amount if kind < 0.6 else rng.randint(1, amount)
                if rng.random() < 0.5:
                    settled = retrying.while_database_down(billing.settle, pg_engine, hold, charge, patience=20)
                else:
                    def transactional() -> ledger.Settlement:
                        with pg_engine.begin() as conn:
                            return ledger.settle(conn, hold, charge, now=clock.now().timestamp(),
                                                 day=billing.today(TZ))
                    settled = retrying.while_database_down(transactional, patience=20)
                with spent_lock:
                    spent[0] += settled.charged
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def admin() -> None:
        rng = random.Random(99)
        try:
            while not stop.is_set():
                plan = rng.choice(["free", "plus", "pro", "ultra"])
                def change() -> None:
                    with pg_engine.begin() as conn:
                        ledger.change_plan(conn, aid, plan, billing.today(TZ), now=clock.now().timestamp())
                retrying.while_database_down(change, patience=20)
                if rng.random() < 0.3:
                    def give() -> None:
                        with pg_engine.begin() as conn:
                            ledger.grant(conn, aid, rng.randint(1, 300) * MICRO, now=clock.now().timestamp())
                    retrying.while_database_down(give, patience=20)
                with pg_engine.connect() as conn:  # the books balance at every moment, holds open or not
                    row = conn.execute(text(
                        "SELECT a.allowance + a.topup"
                        " - (SELECT SUM(amount) FROM ledger_entries WHERE account_id = a.id),"
                        " a.held - (SELECT COALESCE(SUM(amount), 0) FROM holds"
                        " WHERE account_id = a.id AND status = 'open'),"
                        " a.allowance, a.topup, a.allowance + a.topup - a.held FROM accounts a WHERE a.id = :a"),
                        {"a": aid}).one()
                assert row[0] == 0 and row[1] == 0 and min(row[2], row[3], row[4]) >= 0, row
                time.sleep(rng.random() / 100)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=spender, args=(i,)) for i in range(4)] + [threading.Thread(target=admin)]
    for t in threads:
        t.start()
    time.sleep(4.0)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    b = assert_books(pg_engine, aid)
    with pg_engine.connect() as conn:
        plan, deficit, _grants, settles = conn.execute(text(
            "SELECT plan, allowance_deficit, (SELECT COALESCE(SUM(amount), 0) FROM ledger_entries WHERE account_id ="
            " a.id AND kind = 'grant'), (SELECT COALESCE(-SUM(amount), 0) FROM ledger_entries WHERE account_id = a.id"
            " AND kind = 'settle') FROM accounts a WHERE a.id = :a"), {"a": aid}).one()
    assert settles == spent[0]
    # no hold open: whatever a downgrade kept for holds was taken back, so no more than the plan's day
    # is left of the allowance (a deficit left is an overspent day's, with the allowance at 0)
    assert b["allowance"] <= daily_allowance_micro(plan), (b, plan, deficit)
    assert deficit == 0 or b["allowance"] == 0, (b, deficit)


# --- a key's daily cap reserved from both sides of midnight at once -----------------------------


def test_capped_reservations_from_both_sides_of_midnight_at_once_never_pass_either_days_cap(
        pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "ultra")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, 1_000_000 * MICRO, now=clock.now().timestamp())
        key = accounts.create_key(conn, account.account_id, name="capped", now=clock.now().timestamp(),
                                  daily_cap=1000 * MICRO)
    day, next_day = "2030-01-01", "2030-01-02"
    barrier = threading.Barrier(12)

    def reserve(d: str) -> Any:
        barrier.wait()
        held = []
        for _ in range(10):
            try:
                with pg_engine.begin() as conn:
                    held.append((d, ledger.reserve(conn, account_id=account.account_id, key_id=key.id,
                                                   amount=60 * MICRO, purpose="test:cap", now=clock.now().timestamp(),
                                                   ttl=60, cap_day=d)))
            except InsufficientCredits:
                pass
        for _, hold in held[::2]:  # half of them charged a part, the rest left open for a moment
            with pg_engine.begin() as conn:
                ledger.settle(conn, hold, 25 * MICRO, now=clock.now().timestamp())
        return held

    results = run_threads(*[lambda d=day if i % 2 else next_day: reserve(d) for i in range(12)])
    assert not any(isinstance(r, Exception) for r in results), results
    with pg_engine.connect() as conn:
        per_day = dict(conn.execute(text(
            "SELECT key_cap_day, SUM(CASE WHEN status = 'open' THEN amount ELSE charged END) FROM holds"
            " WHERE key_id = :k GROUP BY key_cap_day"), {"k": key.id}).all())
        cap_used, cap_day = conn.execute(text("SELECT cap_used, cap_day FROM api_keys WHERE id = :k"),
                                         {"k": key.id}).one()
    assert cap_day == next_day  # never turned back
    assert all(v <= 1000 * MICRO for v in per_day.values()), per_day  # neither day past its cap
    assert cap_used == per_day.get(next_day, 0)  # what the new day's count holds is exactly its holds
    assert set(per_day) <= {day, next_day}
    with pg_engine.begin() as conn:
        for (hold_id,) in conn.execute(text("SELECT id FROM holds WHERE key_id = :k AND status = 'open'"),
                                       {"k": key.id}).all():
            ledger.release(conn, hold_id, now=clock.now().timestamp())
    assert_books(pg_engine, account.account_id)

