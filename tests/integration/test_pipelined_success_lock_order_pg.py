"""On PostgreSQL a job's pipelined success (common.jobs.lifecycle_pg) and a cancel of the same job
at once queue up instead of deadlocking. The success's settlement, sent first, locks the account
row before the hold and the job row, as the cancel takes the account row before the job row; when
the settlement stands aside (an allowance still an earlier billing day's), the pipelined
transaction writes nothing and leaves the job row alone, and the success's general path takes the
account row, then the job row, as the cancel does.

The success is stopped inside its job row's update (a trigger waiting on an advisory lock the test
holds) until the cancel waits on a lock: the interleaving in which a success that locked the job
row before the account row deadlocks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from common import accounts, billing, clock
from common.errors import Conflict
from common.jobs import lifecycle
from common.jobs.submit import submit_job
from common.money import MICRO
from tests.conftest import TEST_TZ, create_test_account
from tests.integration.races_books import assert_books, open_transactions, wait_for_a_lock_wait

pytestmark = pytest.mark.postgres
TZ = TEST_TZ
PRICE = 200 * MICRO
GATE = 0x48656C79  # the advisory lock a success's job row update waits on

_GATED_SUCCESS = f"""
CREATE FUNCTION helyx_test_gated_success() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'succeeded' THEN PERFORM pg_advisory_xact_lock_shared({GATE}); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER helyx_test_gated_success BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION helyx_test_gated_success();
"""


def _cancel_or_finished(engine: Engine, account_id: str, job_id: str) -> bool | str:
    """The cancel's outcome, or "finished" when the job had ended first (its 409)."""
    try:
        return lifecycle.cancel(engine, account_id, job_id)
    except Conflict:
        return "finished"


def _gated_race(engine: Engine, success: Callable[[], Any], cancel: Callable[[], Any]) -> dict[str, Any]:
    """`success` stopped at the gate inside its job row's update, then `cancel` until it waits on a
    lock too, then the gate opened; their results (or errors)."""
    results: dict[str, Any] = {}

    def run(name: str, work: Callable[[], Any]) -> None:
        try:
            results[name] = work()
        except BaseException as exc:  # noqa: BLE001 - asserted by the caller
            results[name] = exc

    with engine.begin() as conn:
        conn.exec_driver_sql(_GATED_SUCCESS)
    gate = engine.connect()
    threads = [threading.Thread(target=run, args=("success", success)),
               threading.Thread(target=run, args=("cancel", cancel))]
    try:
        gate.execute(text("SELECT pg_advisory_lock(:g)"), {"g": GATE})
        gate.commit()
        threads[0].start()
        wait_for_a_lock_wait(engine, count=1)  # the success, at the gate
        threads[1].start()
        wait_for_a_lock_wait(engine, count=2)  # and the cancel, behind a row the success holds
    finally:
        gate.execute(text("SELECT pg_advisory_unlock(:g)"), {"g": GATE})
        gate.commit()
        gate.close()
        for thread in threads:
            if thread.ident is not None:  # started
                thread.join(30)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER helyx_test_gated_success ON jobs;"
                                 " DROP FUNCTION helyx_test_gated_success()")
    assert not any(thread.is_alive() for thread in threads)
    return results


@pytest.mark.parametrize("settled_in_the_pipeline", [True, False], ids=["one-statement", "earlier-day"])
def test_a_pipelined_success_and_a_cancel_of_the_same_job_queue_up_instead_of_deadlocking(
        pg_engine: Engine, settled_in_the_pipeline: bool) -> None:
    """With the account's allowance today's, the success holds the account row, the hold and the
    job row when the cancel comes: the cancel waits for the account row and finds the job
    finished. Given the next billing day, the settlement stands aside and the pipelined
    transaction commits nothing; the general path then holds the account row (the new day's reset
    made) and the job row when the cancel comes, with the same outcome."""
    account = create_test_account(pg_engine, "pro")
    principal = accounts.authenticate(pg_engine, account.api_key, now=clock.now().timestamp())
    job_id = submit_job(pg_engine, principal, job_type="image", model="nano-banana-pro", price=PRICE, tz=TZ,
                        params={"prompt": "p", "n": 1, "width": 256, "height": 256}).job_id
    job = lifecycle.claim(pg_engine, job_id, "worker-1", 60, None)
    assert job is not None
    today = billing.today(TZ)
    day = today if settled_in_the_pipeline else (date.fromisoformat(today) + timedelta(days=1)).isoformat()
    files = [{"id": f"file_{job_id}", "storage_key": "k", "content_type": "image/png", "bytes": 1}]

    results = _gated_race(pg_engine, lambda: lifecycle.succeed(pg_engine, job, "worker-1", files, 3600, day),
                          lambda: _cancel_or_finished(pg_engine, account.account_id, job_id))

    assert results == {"success": True, "cancel": "finished"}
    with pg_engine.connect() as conn:
        status, charged, hold, kinds = conn.execute(text(
            "SELECT j.status, j.charged, h.status, (SELECT string_agg(e.kind, ',' ORDER BY e.id)"
            " FROM ledger_entries e WHERE e.hold_id = h.id) FROM jobs j JOIN holds h ON h.id = j.hold_id"
            " WHERE j.id = :j"), {"j": job_id}).one()
    assert (status, charged, hold, kinds) == ("succeeded", PRICE, "settled", "reserve,settle")
    assert_books(pg_engine, account.account_id)
    assert open_transactions(pg_engine) == 0
