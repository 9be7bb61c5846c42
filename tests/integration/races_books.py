"""What the race tests of tests/integration/test_races_*_pg.py share: the books' check after each
race (per account: balance == sum of the ledger, held == open holds, nothing negative, every hold
resolved once, its charge what its generation or job records), threads started together, and the
server's own view of its sessions (lock waits, transactions left open)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text

from common import clock


def assert_books(engine: Engine, account_id: str, *, open_holds: int = 0) -> dict[str, int]:
    with engine.connect() as conn:
        allowance, topup, held = conn.execute(text("SELECT allowance, topup, held FROM accounts WHERE id = :a"),
                                              {"a": account_id}).one()
        total, held_total = conn.execute(text("SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(held_delta), 0)"
                                              " FROM ledger_entries WHERE account_id = :a"), {"a": account_id}).one()
        opened, open_sum = conn.execute(text("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM holds"
                                             " WHERE account_id = :a AND status = 'open'"), {"a": account_id}).one()
        # every resolved hold: exactly one resolve row, charging what the hold says it charged
        bad = conn.execute(text(
            "SELECT h.id, h.status, h.charged, COUNT(e.id) AS n, COALESCE(SUM(e.amount), 0) AS amt,"
            " COALESCE(SUM(e.held_delta), 0) AS hd FROM holds h"
            " LEFT JOIN ledger_entries e ON e.reference = 'resolve:' || h.id"
            " WHERE h.account_id = :a GROUP BY h.id, h.status, h.charged, h.amount"
            " HAVING (h.status = 'open' AND COUNT(e.id) <> 0) OR (h.status <> 'open' AND (COUNT(e.id) <> 1"
            " OR COALESCE(SUM(e.amount), 0) <> -h.charged OR COALESCE(SUM(e.held_delta), 0) <> -h.amount))"),
            {"a": account_id}).all()
        # what a chat's hold charged is its generation's credits; a job's, the job's `charged`
        chats = conn.execute(text(
            "SELECT h.id, h.charged, g.credits FROM holds h LEFT JOIN generations g ON 'chat:' || g.id = h.purpose"
            " WHERE h.account_id = :a AND h.purpose LIKE 'chat:%' AND h.status <> 'open'"
            " AND (g.id IS NULL OR g.credits <> h.charged)"), {"a": account_id}).all()
        jobs = conn.execute(text(
            "SELECT j.id, j.status, j.charged, h.charged, h.status FROM jobs j JOIN holds h ON h.id = j.hold_id"
            " WHERE j.account_id = :a AND (j.charged <> h.charged"
            " OR (j.status IN ('failed', 'canceled') AND h.charged <> 0)"
            " OR (j.status IN ('queued', 'running') AND h.status <> 'open')"
            " OR (j.status IN ('succeeded', 'failed', 'canceled') AND h.status = 'open'))"),
            {"a": account_id}).all()
    assert allowance + topup == total, (allowance, topup, total)
    assert held == held_total == open_sum, (held, held_total, open_sum)
    assert allowance >= 0 and topup >= 0 and allowance + topup - held >= 0, (allowance, topup, held)
    assert opened == open_holds, opened
    assert not bad, bad
    assert not chats, chats
    assert not jobs, jobs
    return {"allowance": allowance, "topup": topup, "held": held}


def hold_row(engine: Engine, hold_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM holds WHERE id = :h"), {"h": hold_id}).one()


def past_its_expiry(engine: Engine, hold_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE holds SET expires_at = :t WHERE id = :h"),
                     {"t": clock.now().timestamp() - 1, "h": hold_id})


def wait_for_a_lock_wait(engine: Engine, seconds: float = 20.0, *, count: int = 1
                         ) -> None:  # a busy shared machine: not 5 s
    """Until `count` backends of this database wait on a lock. Each look in a transaction of its own:
    a backend's view of pg_stat_activity holds still for its whole transaction, so a loop inside
    one saw only its first look (and failed on a loaded machine)."""
    deadline = time.monotonic() + seconds
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(text("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                                        " AND wait_event_type = 'Lock'")).scalar_one()
            conn.rollback()
            if waiting >= count:
                return
            time.sleep(0.02)
    raise AssertionError(f"fewer than {count} backends ever waited on a lock at once")


def run_threads(*work: Callable[[], Any], timeout: float = 60.0) -> list[Any]:
    results: list[Any] = [None] * len(work)

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - looked at by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn), name=f"t{i}") for i, fn in enumerate(work)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread hung (a deadlock nobody broke?)"
    return results


# --- a chat's late settlement and its hold's expiry -------------------------------------------


def open_transactions(engine: Engine, patience: float = 5.0) -> int:
    """Sessions of this database idle in a transaction, once any that is ending has ended: a
    connection thrown away with its transaction open (common.pg_statements) shows so until its
    backend has read the close, a moment later (CI saw one once). One left open in a pool stays."""
    deadline = time.monotonic() + patience
    while True:
        with engine.connect() as conn:  # a look per transaction: the view holds still within one
            count = int(conn.execute(text("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                                          " AND state LIKE 'idle in transaction%'")).scalar_one())
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.02)
