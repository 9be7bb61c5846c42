"""Job transitions racing each other on real PostgreSQL (skipped locally without it, failing in CI):
a claim that waits for the account's running slot and a cancel or a late finish of the same job
must serialize, never deadlock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from common import accounts, clock, ledger
from common.jobs import lifecycle, lifecycle_pg, transition_sql
from common.jobs.submit import submit_job
from tests.api.chat.helpers import assert_books_balance
from tests.conftest import TEST_TZ, TestAccount, create_test_account

pytestmark = pytest.mark.postgres
PRICE = 200_000_000


def _job(engine: Engine, account: TestAccount) -> str:
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    return submit_job(engine, principal, job_type="image", model="nano-banana-pro", price=PRICE, tz=TEST_TZ,
                      params={"prompt": "race", "n": 1, "width": 256, "height": 256}).job_id


def _kinds(engine: Engine, job_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT e.kind FROM ledger_entries e JOIN holds h ON h.id = e.hold_id"
                                 " WHERE h.purpose = :p ORDER BY e.id"), {"p": f"job:{job_id}"})
        return [r[0] for r in rows]


def _race(first: Callable[[], Any], second: Callable[[], Any], *, engine: Engine | None = None,
          after: str = "UPDATE jobs SET status") -> tuple[Any, Any]:
    """Run `first` and `second`, each in its own thread: their results or errors. With `engine`,
    `second` starts once `first` has run a statement beginning with `after` there (so its
    transaction holds what that locked), however late its thread gets going; else both at once."""
    results: list[Any] = [None, None]
    first_locked = threading.Event()
    first_thread: list[threading.Thread] = []

    def mark(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.current_thread() in first_thread and statement.lstrip().startswith(after):
            first_locked.set()

    def run(index: int, fn: Callable[[], Any]) -> None:
        try:
            if index == 1 and engine is not None:
                assert first_locked.wait(10), f"the first never ran {after!r}"
            results[index] = fn()
        except Exception as exc:  # noqa: BLE001 (the error is the result under test)
            results[index] = exc

    threads = [threading.Thread(target=run, args=(0, first)), threading.Thread(target=run, args=(1, second))]
    first_thread.append(threads[0])
    if engine is not None:
        event.listen(engine, "after_cursor_execute", mark)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
    finally:
        if engine is not None:
            event.remove(engine, "after_cursor_execute", mark)
    assert not any(t.is_alive() for t in threads)
    assert engine is None or first_locked.is_set(), f"the first never ran {after!r}: the race was not run"
    return results[0], results[1]


def _slow_ledger(monkeypatch: pytest.MonkeyPatch, verb: str) -> None:
    """The ledger verb waits 0.5 s first, holding what its transaction has locked so far."""
    real = getattr(ledger, verb)

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, verb, slow)


def test_a_cancel_racing_a_capped_claim_of_the_same_job_does_not_deadlock(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    account = create_test_account(pg_engine, "pro")
    job_id = _job(pg_engine, account)
    _slow_ledger(monkeypatch, "release")

    canceled, claimed = _race(lambda: lifecycle.cancel(pg_engine, account.account_id, job_id),
                              lambda: lifecycle.claim(pg_engine, job_id, "worker-1", 10, 4), engine=pg_engine)

    assert not isinstance(canceled, Exception), canceled
    assert claimed is None, claimed  # the job was canceled first: nothing to run
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM jobs WHERE id = :j"), {"j": job_id}).scalar() == "canceled"
    assert _kinds(pg_engine, job_id) == ["reserve", "release"]
    assert_books_balance(pg_engine, account.account_id)


def test_a_late_finish_racing_a_reclaim_of_the_same_job_does_not_deadlock(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    account = create_test_account(pg_engine, "pro")
    job_id = _job(pg_engine, account)
    stalled = lifecycle.claim(pg_engine, job_id, "stalled-worker", 0.05, 4)
    assert stalled is not None
    time.sleep(0.1)  # its lease lapses, but it still finishes
    _slow_ledger(monkeypatch, "settle")

    finished, reclaimed = _race(lambda: lifecycle.succeed(pg_engine, stalled, "stalled-worker", [], 3600),
                                lambda: lifecycle.claim(pg_engine, job_id, "worker-2", 10, 4), engine=pg_engine)

    assert finished is True, finished  # it still held the job: its result counts
    assert reclaimed is None, reclaimed  # and there is nothing left to reclaim
    assert _kinds(pg_engine, job_id) == ["reserve", "settle"]
    assert_books_balance(pg_engine, account.account_id)


def _claimed_at_once(engine: Engine, ids: list[str], cap: Callable[[str], int | None]) -> dict[str, Any]:
    """Each job claimed by a worker of its own, all at once: each job's ClaimedJob, None or
    AccountBusy."""
    barrier = threading.Barrier(len(ids))
    results: dict[str, Any] = {}

    def claim(job_id: str) -> None:
        barrier.wait()
        try:
            results[job_id] = lifecycle.claim(engine, job_id, f"worker-{job_id}", 30, cap)
        except lifecycle.AccountBusy as exc:
            results[job_id] = exc

    threads = [threading.Thread(target=claim, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_concurrent_claims_of_one_account_never_exceed_its_running_cap(pg_engine: Engine) -> None:
    """Twelve workers claim twelve jobs of one account at once, its plan allowing four: exactly
    four run, the other eight wait queued, each with its message sent again. The running count is read after the
    account lock is held, so claims that committed meanwhile are counted."""
    account = create_test_account(pg_engine, "pro")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, 12 * PRICE, now=clock.now().timestamp())
    ids = [_job(pg_engine, account) for _ in range(12)]

    results = _claimed_at_once(pg_engine, ids, lambda plan: 4 if plan == "pro" else 0)  # (the plan's own)
    # A claim may take an older waiting job in its job's place (oldest first), its own job then
    # waiting with its message sent again; the older job's own message then finds it taken (None).
    claimed = [r.id for r in results.values() if isinstance(r, lifecycle.ClaimedJob)]
    resent = [j for j, r in results.items() if isinstance(r, lifecycle.AccountBusy)
              or (isinstance(r, lifecycle.ClaimedJob) and r.id != j)]
    assert len(claimed) == len(set(claimed)) == 4, results
    with pg_engine.connect() as conn:
        statuses = dict(conn.execute(text("SELECT id, status FROM jobs WHERE account_id = :a"),
                                     {"a": account.account_id}).all())
    assert sorted(statuses[j] for j in claimed) == ["running"] * 4
    waiting = [j for j in ids if j not in claimed]
    assert sorted(statuses[j] for j in waiting) == ["queued"] * 8
    # Each waiting job has its message again (one passed over, then taken by a later claim in
    # another's place, has one too many: it finds the job taken, a no-op).
    assert set(waiting) <= set(resent), (waiting, resent)
    assert all(statuses[j] == "running" for j, r in results.items() if r is None)


_SLOW_CLAIMS = """
CREATE FUNCTION helyx_test_slow_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'running' AND OLD.status = 'queued' THEN PERFORM pg_sleep(0.1); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER helyx_test_slow_claim BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION helyx_test_slow_claim();
"""


def test_claims_of_one_account_count_each_other_however_long_each_takes_to_commit(pg_engine: Engine) -> None:
    """Each claim's UPDATE sleeps 0.1 s after its running count was read (a trigger), so claims
    that did not wait for each other would all read a count below the cap and all run: the claims
    of one account must be serialized (the cap's lock), each counting what the one before it
    committed. Eight at once under a cap of two: two run, six wait."""
    account = create_test_account(pg_engine, "pro")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, 8 * PRICE, now=clock.now().timestamp())
    ids = [_job(pg_engine, account) for _ in range(8)]
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(_SLOW_CLAIMS)
    try:
        results = _claimed_at_once(pg_engine, ids, lambda _plan: 2)
    finally:
        with pg_engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER helyx_test_slow_claim ON jobs; DROP FUNCTION helyx_test_slow_claim()")
    with pg_engine.connect() as conn:
        running = conn.execute(text("SELECT count(*) FROM jobs WHERE account_id = :a AND status = 'running'"),
                               {"a": account.account_id}).scalar_one()
    assert running == 2, results
    assert len([r for r in results.values() if isinstance(r, lifecycle.ClaimedJob)]) == 2


def test_a_claim_that_waited_for_the_claim_lock_reads_the_plan_committed_meanwhile(pg_engine: Engine) -> None:
    """The job and its account's plan are read after the lock's wait: a downgrade committed while
    the claim waited sets the cap it is held to (none may run on the new plan here: it waits)."""
    account = create_test_account(pg_engine, "pro")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, PRICE, now=clock.now().timestamp())
    job_id = _job(pg_engine, account)
    outcome: list[Any] = []
    holder = pg_engine.connect()
    holder.begin()
    holder.execute(transition_sql.CLAIM_LOCK, {"id": job_id})  # another claim of the account's, in progress

    def claim() -> None:
        try:
            outcome.append(lifecycle.claim(pg_engine, job_id, "worker-1", 30, lambda plan: 4 if plan == "pro" else 0))
        except lifecycle.AccountBusy as busy:
            outcome.append(busy)

    thread = threading.Thread(target=claim)
    thread.start()
    time.sleep(0.3)
    with pg_engine.begin() as conn:
        ledger.change_plan(conn, account.account_id, "plus", clock.now().date().isoformat(),
                           now=clock.now().timestamp())
    holder.rollback()
    holder.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], lifecycle.AccountBusy), outcome
    with pg_engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()
    assert status == "queued"


def _files(job_id: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"file-{job_id}-{i}", "storage_key": f"k/{job_id}/{i}.png", "content_type": "image/png",
             "bytes": 100 + i} for i in range(n)]


def test_a_success_writes_the_job_its_files_and_one_settlement_and_a_lost_lease_writes_nothing(
        pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "pro")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, 2 * PRICE, now=clock.now().timestamp())
    mine, lost = _job(pg_engine, account), _job(pg_engine, account)
    job = lifecycle.claim(pg_engine, mine, "worker-1", 30, 4)
    other = lifecycle.claim(pg_engine, lost, "worker-1", 30, 4)
    assert job is not None and other is not None
    before = assert_books_balance(pg_engine, account.account_id, open_holds=2)

    assert lifecycle.succeed(pg_engine, other, "someone-else", _files(lost, 2), 3600) is False
    assert lifecycle.succeed(pg_engine, job, "worker-1", _files(mine, 2), 3600) is True
    assert lifecycle.succeed(pg_engine, job, "worker-1", _files(mine + "-again", 1), 3600) is False  # once only

    with pg_engine.connect() as conn:
        files = conn.execute(text("SELECT job_id, id, storage_key, content_type, bytes, account_id FROM files"
                                  " WHERE account_id = :a ORDER BY id"), {"a": account.account_id}).all()
        rows = dict(conn.execute(text("SELECT id, status FROM jobs WHERE account_id = :a"),
                                 {"a": account.account_id}).all())
        charged = conn.execute(text("SELECT charged, result FROM jobs WHERE id = :j"), {"j": mine}).one()
    assert [tuple(f) for f in files] == [(mine, f["id"], f["storage_key"], "image/png", f["bytes"], account.account_id)
                                         for f in _files(mine, 2)]
    assert rows == {mine: "succeeded", lost: "running"}
    assert charged[0] == PRICE and charged[1] == f'["file-{mine}-0", "file-{mine}-1"]'
    assert _kinds(pg_engine, mine) == ["reserve", "settle"] and _kinds(pg_engine, lost) == ["reserve"]
    after = assert_books_balance(pg_engine, account.account_id, open_holds=1)  # the lost one's hold stays
    assert before.balance - after.balance == PRICE


def test_a_claim_the_cap_refused_always_waits_with_its_message_even_if_a_slot_frees_meanwhile(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The account is at its cap when the claim counts, and a slot frees (another job requeued,
    which takes no account lock) before the job is put back to wait: the claim must still say
    AccountBusy, so its message is sent again. Returning None would drop the message and leave
    the job queued until the stale-queue sweep. On the general path, whose statements a hook can
    come between; the pipelined one has the same window on the server, between its claim and its
    wait, and decides AccountBusy the same way, from the wait's own count."""
    monkeypatch.setattr(lifecycle_pg, "claim", lambda *args, **kwargs: None)
    account = create_test_account(pg_engine, "pro")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, 2 * PRICE, now=clock.now().timestamp())
    running_id, waiting_id = _job(pg_engine, account), _job(pg_engine, account)
    assert lifecycle.claim(pg_engine, running_id, "worker-a", 30, 1) is not None
    freed: list[bool] = []

    def free_a_slot_before_the_wait(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not freed and statement.startswith("UPDATE jobs SET status = 'queued'") and "error_code" not in statement:
            freed.append(lifecycle.requeue(pg_engine, running_id, "worker-a", "x", "freed meanwhile"))

    event.listen(pg_engine, "before_cursor_execute", free_a_slot_before_the_wait)
    try:
        with pytest.raises(lifecycle.AccountBusy):
            lifecycle.claim(pg_engine, waiting_id, "worker-b", 30, 1)
    finally:
        event.remove(pg_engine, "before_cursor_execute", free_a_slot_before_the_wait)
    assert freed == [True]
    with pg_engine.connect() as conn:
        statuses = dict(conn.execute(text("SELECT id, status FROM jobs WHERE account_id = :a"),
                                     {"a": account.account_id}).all())
    assert statuses == {running_id: "queued", waiting_id: "queued"}


def test_a_job_whose_attempts_were_used_up_by_dead_workers_is_failed_and_refunded_once(pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "pro")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, PRICE, now=clock.now().timestamp())
    job_id = _job(pg_engine, account)
    before = assert_books_balance(pg_engine, account.account_id, open_holds=1)
    for attempt in (1, 2):  # two workers die with it
        claimed = lifecycle.claim(pg_engine, job_id, f"dead-{attempt}", 0.05, 4, max_attempts=2)
        assert claimed is not None and claimed.attempts == attempt
        time.sleep(0.1)

    # two workers reclaim the lapsed lease at once: one fails and refunds it, the other finds nothing
    first, second = _race(lambda: lifecycle.claim(pg_engine, job_id, "w-1", 30, 4, max_attempts=2),
                          lambda: lifecycle.claim(pg_engine, job_id, "w-2", 30, 4, max_attempts=2))
    assert sorted([type(first).__name__, type(second).__name__]) == ["AttemptsExhausted", "NoneType"]
    with pg_engine.connect() as conn:
        row = conn.execute(text("SELECT status, error_code, attempts, lease_owner FROM jobs WHERE id = :j"),
                           {"j": job_id}).one()
    assert tuple(row) == ("failed", "worker_lost", 2, None)
    assert _kinds(pg_engine, job_id) == ["reserve", "release"]
    after = assert_books_balance(pg_engine, account.account_id, open_holds=0)
    assert after.balance == before.balance and after.held == 0 and after.available == before.available + PRICE


def test_the_stale_queue_sweep_skips_a_job_a_claim_holds_and_never_deadlocks_with_it(pg_engine: Engine) -> None:
    """A claim that takes the oldest waiting job in its own job's place locks two job rows; the
    sweep locked stale rows one by one in its own order, and the two deadlocked (a diff review).
    The sweep now skips what another transaction holds, at once; its next pass takes it."""
    from common.jobs import recovery

    account = create_test_account(pg_engine, "pro")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, 3 * PRICE, now=clock.now().timestamp())
    held, free = _job(pg_engine, account), _job(pg_engine, account)
    with pg_engine.begin() as conn:  # both stale: no message for a long while
        conn.execute(text("UPDATE jobs SET enqueued_at = enqueued_at - 3600 WHERE account_id = :a"),
                     {"a": account.account_id})
    claim = pg_engine.connect()
    try:
        claim.begin()
        claim.execute(text("SELECT id FROM jobs WHERE id = :j FOR UPDATE"), {"j": held})  # as a claim holds it
        swept = _race(lambda: recovery.stale_queued(pg_engine, 60), lambda: None)[0]
        assert swept == [free], swept  # at once, without the held one
    finally:
        claim.rollback()
        claim.close()
    assert recovery.stale_queued(pg_engine, 60) == [held]  # the next pass


def test_claims_that_waited_for_the_account_lock_each_take_a_waiting_job_while_slots_are_free(
        pg_engine: Engine) -> None:
    """The oldest waiting job is read once the account lock is held: claims queued on that lock
    (behind a submission's reservation, another claim) do not all name the same job, the first
    taking it and the others refused as busy with the cap's slots free."""
    account = create_test_account(pg_engine, "pro")
    jobs = [_job(pg_engine, account) for _ in range(6)]
    with pg_engine.begin() as conn:  # each waited for a slot once (refused by the cap)
        conn.execute(text("UPDATE jobs SET enqueued_at = created_at + 1 WHERE account_id = :a"),
                     {"a": account.account_id})
    results: dict[str, Any] = {}

    def claim(job_id: str) -> None:
        try:
            results[job_id] = lifecycle.claim(pg_engine, job_id, f"w-{job_id}", 60, 4)
        except Exception as exc:  # noqa: BLE001 (the error is the result under test)
            results[job_id] = exc

    with pg_engine.connect() as holder, holder.begin():
        holder.execute(text("SELECT 1 FROM accounts WHERE id = :a FOR UPDATE"), {"a": account.account_id})
        threads = [threading.Thread(target=claim, args=(job_id,)) for job_id in jobs[3:]]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the three claims wait for the account lock
    for thread in threads:
        thread.join(timeout=20)
    assert not any(isinstance(r, Exception) for r in results.values()), results
    assert sorted(r.id for r in results.values()) == sorted(jobs[:3])  # the three oldest, one each
