"""Jobs on PostgreSQL (an adversarial review's interleavings): a job's hold expiring while it runs,
a cancel meeting a claim, a success, a failure or a lapsed lease's reclaim, and an
Idempotency-Key resubmission meeting the cancel or failure of its first job: each job ends
charged once or refunded, and the books balance."""

# ruff: noqa: B023 - the closures run (and are joined) inside their own loop iteration
from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, text

from common import accounts, billing, clock, ledger
from common.errors import Conflict
from common.jobs import lifecycle
from common.jobs.submit import submit_job
from common.money import MICRO
from tests.conftest import TEST_TZ, create_test_account
from tests.integration.races_books import assert_books, past_its_expiry, run_threads

pytestmark = pytest.mark.postgres
TZ = TEST_TZ
PRICE = 200 * MICRO
PARAMS = {"prompt": "p", "n": 1, "width": 256, "height": 256}


def _job(engine: Engine, plan: str = "ultra", *, idem: str | None = None, capped: bool = False,
         account: Any = None) -> tuple[Any, str]:
    account = account or create_test_account(engine, plan)
    if capped:
        with engine.begin() as conn:
            conn.execute(text("UPDATE api_keys SET daily_cap = :c WHERE id = :k"),  # room for every job a
                         {"c": 100 * PRICE, "k": account.key_id})  # test makes (the cancel race: 16, most charged)
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    job_id = submit_job(engine, principal, job_type="image", model="nano-banana-pro", params=PARAMS, price=PRICE,
                        tz=TZ, idempotency_key=idem).job_id
    return principal, job_id


@pytest.mark.parametrize("capped", [False, True])
def test_a_job_whose_hold_expired_while_it_ran_succeeds_free_and_records_the_truth(pg_engine: Engine,
                                                                                   capped: bool) -> None:
    principal, job_id = _job(pg_engine, capped=capped)
    job = lifecycle.claim(pg_engine, job_id, "w1", 60, None)
    assert job is not None
    past_its_expiry(pg_engine, job.hold_id)
    assert billing.expire_holds(pg_engine) == 1
    files = [{"id": f"file_{job_id}", "storage_key": "k", "content_type": "image/png", "bytes": 1}]

    assert lifecycle.succeed(pg_engine, job, "w1", files, 3600, billing.today(TZ)) is True

    with pg_engine.connect() as conn:
        status, charged = conn.execute(text("SELECT status, charged FROM jobs WHERE id = :j"), {"j": job_id}).one()
        cap_used = conn.execute(text("SELECT cap_used FROM api_keys WHERE id = :k"), {"k": principal.key_id}).scalar()
    assert (status, charged) == ("succeeded", 0)
    if capped:
        assert cap_used == 0  # the expiry gave the cap back: nothing counted, nothing charged
    assert_books(pg_engine, principal.account_id)


# --- cancel against claim, success, reclaim ------------------------------------------------------


FILES = [{"id": "", "storage_key": "k", "content_type": "image/png", "bytes": 1}]


def _cancel_or_finished(engine: Engine, account_id: str, job_id: str) -> bool | str:
    """The cancel's outcome, or "finished" when the job had ended first (its 409)."""
    try:
        return lifecycle.cancel(engine, account_id, job_id)
    except Conflict:
        return "finished"


def _files(job_id: str) -> list[dict[str, Any]]:
    return [{**FILES[0], "id": f"file_{job_id}_{random.getrandbits(32):x}"}]


@pytest.mark.parametrize("capped", [False, True])
def test_cancels_racing_claims_successes_and_failures_settle_each_job_exactly_once(
        pg_engine: Engine, capped: bool) -> None:
    """Per job, at once: a claim and its success (or its failure), a cancel, and a redelivered
    message's claim; each job ends canceled and refunded, or succeeded and charged, or failed and
    refunded, never two of them."""
    account = create_test_account(pg_engine, "ultra")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, 100 * PRICE, now=clock.now().timestamp())
    outcomes: dict[str, int] = {}
    for round_ in range(16):
        _, job_id = _job(pg_engine, account=account, capped=capped)
        barrier = threading.Barrier(3)

        def worker(fails: bool = round_ % 4 == 3) -> Any:
            barrier.wait()
            job = lifecycle.claim(pg_engine, job_id, "w1", 30, 2)
            if job is None:
                return "not claimed"
            if fails:
                return lifecycle.fail(pg_engine, job, "w1", "upstream_error", "boom")
            return lifecycle.succeed(pg_engine, job, "w1", _files(job_id), 3600, billing.today(TZ))

        def redelivered() -> Any:
            barrier.wait()
            time.sleep(random.random() / 200)
            return lifecycle.claim(pg_engine, job_id, "w2", 30, 2)

        def cancel() -> Any:
            barrier.wait()
            time.sleep(random.random() / 100)
            return _cancel_or_finished(pg_engine, account.account_id, job_id)

        results = run_threads(worker, redelivered, cancel)
        assert not any(isinstance(r, Exception) for r in results), results
        with pg_engine.connect() as conn:
            status = conn.execute(text("SELECT status FROM jobs WHERE id = :j"), {"j": job_id}).scalar_one()
        if status == "running":  # w2's claim won and nobody ends it: its worker would; cancel now
            assert lifecycle.cancel(pg_engine, account.account_id, job_id) is True
            status = "canceled"
        outcomes[status] = outcomes.get(status, 0) + 1
    assert_books(pg_engine, account.account_id)
    assert set(outcomes) <= {"succeeded", "canceled", "failed"}, outcomes


def test_a_cancel_racing_the_reclaim_of_a_lapsed_lease_and_the_old_workers_late_success(pg_engine: Engine) -> None:
    principal, job_id = _job(pg_engine)
    stalled = lifecycle.claim(pg_engine, job_id, "old", 30, None)
    assert stalled is not None
    with pg_engine.begin() as conn:  # the old worker stalled past its lease
        conn.execute(text("UPDATE jobs SET lease_until = :t WHERE id = :j"), {"t": clock.now().timestamp() - 1,
                                                                               "j": job_id})
    barrier = threading.Barrier(3)

    def reclaim() -> Any:
        barrier.wait()
        job = lifecycle.claim(pg_engine, job_id, "new", 30, None)
        if job is None:  # finished (by the old worker or the cancel) before the claim
            return None
        return lifecycle.succeed(pg_engine, job, "new", _files(job_id), 3600, billing.today(TZ))

    def late() -> Any:
        barrier.wait()
        return lifecycle.succeed(pg_engine, stalled, "old", _files(job_id), 3600, billing.today(TZ))

    def cancel() -> Any:
        barrier.wait()
        return _cancel_or_finished(pg_engine, principal.account_id, job_id)

    results = run_threads(reclaim, late, cancel)
    assert not any(isinstance(r, Exception) for r in results), results
    reclaimed, late_landed, _ = results
    # The old worker's late result lands only while nobody else has claimed the job (a lapsed
    # lease alone does not refuse it); once the new worker has it, the old one's never does.
    assert not (late_landed and reclaimed is not None), results
    with pg_engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM jobs WHERE id = :j"), {"j": job_id}).scalar_one()
    assert status in ("succeeded", "canceled")
    assert (status == "succeeded") == (late_landed is True or reclaimed is True), (status, results)
    assert_books(pg_engine, principal.account_id)


# --- an Idempotency-Key resubmitted while its first job is canceled or failed -------------------


@pytest.mark.parametrize("ending", ["cancel", "fail"])
def test_an_idempotent_resubmission_racing_the_end_of_its_first_job_is_that_job_and_charges_nothing_more(
        pg_engine: Engine, ending: str) -> None:
    principal, job_id = _job(pg_engine, idem="same-key")
    job = lifecycle.claim(pg_engine, job_id, "w1", 30, None) if ending == "fail" else None
    barrier = threading.Barrier(6)

    def resubmit() -> Any:
        barrier.wait()
        return submit_job(pg_engine, principal, job_type="image", model="nano-banana-pro", params=PARAMS,
                          price=PRICE, tz=TZ, idempotency_key="same-key")

    def end() -> Any:
        barrier.wait()
        if ending == "cancel":
            return lifecycle.cancel(pg_engine, principal.account_id, job_id)
        return lifecycle.fail(pg_engine, job, "w1", "upstream_error", "boom")

    results = run_threads(end, *[resubmit] * 5)
    assert results[0] is True
    assert {(s.job_id, s.created) for s in results[1:]} == {(job_id, False)}
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM jobs WHERE account_id = :a"),
                            {"a": principal.account_id}).scalar_one() == 1
        assert conn.execute(text("SELECT COUNT(*) FROM holds WHERE account_id = :a"),
                            {"a": principal.account_id}).scalar_one() == 1
    assert_books(pg_engine, principal.account_id)


# --- plan changes and grants among open holds and settlements -----------------------------------


