"""The ledger under real concurrency on PostgreSQL: threads and separate processes race for the same
credits; exactly what the account can afford is reserved, never more, and the books balance after."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from common import accounts, billing, clock, ledger
from common.db import make_engine
from common.errors import Conflict, InsufficientCredits
from common.money import MICRO
from tests.common.test_ledger import assert_books_balance
from tests.conftest import TEST_TZ, create_test_account

TZ = TEST_TZ
PKT = "Asia/Karachi"  # the midnight test freezes the clock at its midnight
AFFORDABLE = 50
AMOUNT = 1000 * MICRO // AFFORDABLE  # a free account's day buys exactly 50 of these
MAIN_ATTEMPTS, MAIN_THREADS = 100, 32
PROCESSES, PROCESS_ATTEMPTS, PROCESS_THREADS = 2, 50, 8


def try_reserve(engine: Engine, account_id: str, key_id: str) -> str | None:
    try:
        with engine.begin() as conn:
            return ledger.reserve(conn, account_id=account_id, key_id=key_id, amount=AMOUNT, purpose="race",
                                  now=clock.now().timestamp(), ttl=900)
    except InsufficientCredits:
        return None


def race(engine: Engine, account_id: str, key_id: str, attempts: int, threads: int) -> list[str | None]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: try_reserve(engine, account_id, key_id), range(attempts)))


def reserve_in_a_process(pg_url: str, account_id: str, key_id: str, start: Any, results: Any) -> None:
    """Runs in a spawned process: its own engine, its own threads, released by the shared barrier."""
    engine = make_engine(pg_url, pool_size=PROCESS_THREADS)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))  # connect before the start, so the race is a race
        start.wait(timeout=60)
        results.put(race(engine, account_id, key_id, PROCESS_ATTEMPTS, PROCESS_THREADS))
    finally:
        engine.dispose()


def watch_available(engine: Engine, account_id: str, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        with engine.connect() as conn:
            seen.append(conn.execute(text("SELECT allowance + topup - held FROM accounts WHERE id = :a"),
                                     {"a": account_id}).scalar_one())


def totals(engine: Engine, account_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        allowance, topup, held = conn.execute(
            text("SELECT allowance, topup, held FROM accounts WHERE id = :a"), {"a": account_id}).one()
        entries = conn.execute(text("SELECT COUNT(*) FROM ledger_entries WHERE account_id = :a"),
                               {"a": account_id}).scalar_one()
        open_holds = conn.execute(text("SELECT COUNT(*) FROM holds WHERE account_id = :a AND status = 'open'"),
                                  {"a": account_id}).scalar_one()
    return {"allowance": allowance, "topup": topup, "held": held, "entries": entries, "open": open_holds}


def test_200_concurrent_reservations_from_threads_and_processes_get_exactly_50(pg_url: str, pg_engine: Engine
                                                                              ) -> None:
    account = create_test_account(pg_engine, "free")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES + 1)
    results = context.Queue()
    workers = [context.Process(target=reserve_in_a_process,
                               args=(pg_url, account.account_id, account.key_id, start, results))
               for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=watch_available, args=(pg_engine, account.account_id, stop, seen))
    try:
        with pg_engine.connect() as conn:  # warm the pool so that our threads start together too
            conn.execute(text("SELECT 1"))
        watcher.start()
        start.wait(timeout=60)
        outcomes = race(pg_engine, account.account_id, account.key_id, MAIN_ATTEMPTS, MAIN_THREADS)
        for _ in workers:
            outcomes += results.get(timeout=60)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        if watcher.is_alive():
            watcher.join(timeout=10)
    assert [w.exitcode for w in workers] == [0] * PROCESSES

    assert len(outcomes) == MAIN_ATTEMPTS + PROCESSES * PROCESS_ATTEMPTS == 200
    holds = [h for h in outcomes if h is not None]
    assert len(holds) == len(set(holds)) == AFFORDABLE
    assert seen and min(seen) >= 0, "available went negative while the race ran"
    assert totals(pg_engine, account.account_id) == {
        "allowance": 1000 * MICRO, "topup": 0, "held": AFFORDABLE * AMOUNT, "entries": 1 + AFFORDABLE,
        "open": AFFORDABLE}

    charges = [AMOUNT if i % 3 == 0 else AMOUNT // 3 if i % 3 == 1 else 0 for i in range(len(holds))]
    with ThreadPoolExecutor(16) as pool:
        settled = list(pool.map(lambda pair: billing.settle(pg_engine, *pair), zip(holds, charges, strict=True)))
        retried = list(pool.map(lambda pair: billing.settle(pg_engine, *pair), zip(holds, charges, strict=True)))
    assert [s.charged for s in settled] == charges and all(s.applied for s in settled)
    assert not any(r.applied for r in retried)

    assert totals(pg_engine, account.account_id) == {
        "allowance": 1000 * MICRO - sum(charges), "topup": 0, "held": 0, "entries": 1 + 2 * AFFORDABLE, "open": 0}
    with pg_engine.connect() as conn:
        assert_books_balance(conn)


def run_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def guarded(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_capped_key_reserves_and_settles_racing_each_other_never_deadlock(pg_engine: Engine) -> None:
    """reserve locks the key row then the account row; settle must take them in the same order."""
    account = create_test_account(pg_engine, "ultra")
    with pg_engine.begin() as conn:
        key_id = accounts.create_key(conn, account.account_id, name="capped", now=clock.now().timestamp(),
                                     daily_cap=10_000 * MICRO).id
    rounds, threads = 25, 16

    def work(_: int) -> None:
        for _ in range(rounds):
            hold_id = billing.reserve(pg_engine, account_id=account.account_id, key_id=key_id, amount=2 * MICRO,
                                      purpose="race", ttl=60, tz=TZ, capped=True)
            billing.settle(pg_engine, hold_id, MICRO)

    errors = run_threads(threads, work)
    assert errors == [], f"{len(errors)} failures, the first: {errors[0]!r}" if errors else ""
    with pg_engine.connect() as conn:
        cap_used = conn.execute(text("SELECT cap_used FROM api_keys WHERE id = :k"), {"k": key_id}).scalar_one()
        assert_books_balance(conn)
    assert cap_used == rounds * threads * MICRO  # each settle gave back the unused half
    assert totals(pg_engine, account.account_id)["allowance"] == (25_000 - rounds * threads) * MICRO


def test_concurrent_requests_at_midnight_reset_once(pg_engine: Engine) -> None:
    midnight = datetime(2026, 3, 10, 19, 0, tzinfo=UTC)
    with clock.frozen(midnight - timedelta(minutes=5)) as advance:
        account = create_test_account(pg_engine, "pro", tz=PKT)
        hold_id = billing.reserve(pg_engine, account_id=account.account_id, key_id=None, amount=4000 * MICRO,
                                  purpose="t", ttl=900, tz=PKT)
        billing.settle(pg_engine, hold_id, 4000 * MICRO)
        advance(timedelta(minutes=5))
        errors = run_threads(24, lambda _: billing.apply_daily_reset(pg_engine, account.account_id, "2026-03-10",
                                                                     PKT))
    assert errors == []
    with pg_engine.connect() as conn:
        resets = conn.execute(text("SELECT reference FROM ledger_entries WHERE account_id = :a AND kind = 'reset'"
                                   " ORDER BY id"), {"a": account.account_id}).scalars().all()
        assert_books_balance(conn)
    assert resets == [f"reset:{account.account_id}:2026-03-10", f"reset:{account.account_id}:2026-03-11"]
    assert totals(pg_engine, account.account_id)["allowance"] == 10_000 * MICRO


def test_concurrent_grants_with_one_reference_grant_once(pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "free")
    outcomes: list[bool] = []

    def work(_: int) -> None:
        with pg_engine.begin() as conn:
            outcomes.append(ledger.grant(conn, account.account_id, 7 * MICRO, now=clock.now().timestamp(),
                                         reference="invoice-9"))

    errors = run_threads(12, work)  # they take turns on the account's row: the losers see the winner's row
    assert errors == [] and sorted(outcomes) == [False] * 11 + [True]
    assert totals(pg_engine, account.account_id)["topup"] == 7 * MICRO
    with pg_engine.connect() as conn:
        assert_books_balance(conn)


def test_one_reference_granted_to_two_accounts_at_once_is_a_conflict_for_one(pg_engine: Engine) -> None:
    accounts_ = [create_test_account(pg_engine, "free") for _ in range(8)]
    outcomes: list[bool] = []

    def work(i: int) -> None:
        with pg_engine.begin() as conn:
            outcomes.append(ledger.grant(conn, accounts_[i].account_id, 7 * MICRO, now=clock.now().timestamp(),
                                         reference="invoice-10"))

    errors = run_threads(len(accounts_), work)
    assert outcomes == [True] and len(errors) == len(accounts_) - 1
    assert all(isinstance(e, Conflict) and e.code == "reference_reused" for e in errors), errors
    assert sum(totals(pg_engine, a.account_id)["topup"] for a in accounts_) == 7 * MICRO
    with pg_engine.connect() as conn:
        assert_books_balance(conn)
