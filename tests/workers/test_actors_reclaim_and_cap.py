"""The job actors on the StubBroker when a worker dies or a plan's running cap is reached: a reclaimed job
runs again and is paid for once; its files and the winners' are kept apart; extra jobs wait, never
refused."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from common import billing, clock
from common.jobs import lifecycle
from common.providers.base import ImageRequest, MediaFile
from common.providers.simulated_media import render_png
from common.storage import LocalStorage
from tests.api.chat.helpers import assert_books_balance, books
from tests.waiting import until
from tests.workers.helpers import IMAGE_PRICE, Jobs
from tests.workers.scripted_images import ScriptedImages, pngs
from tests.workers.test_actors_stub import JobsFactory, _decode
from workers import execute, sweeper
from workers.actors import enqueue


def test_a_job_whose_worker_died_is_reclaimed_after_its_lease_and_charged_once(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.3, stale_queued_seconds=3600)
    account = jobs.account()
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account, enqueue=False)
    # claimed, then never renewed; its lease long enough that no pause of a busy machine lapses it too soon
    dead = lifecycle.claim(jobs.engine, job_id, "dead-worker", 60, None)
    assert dead is not None and jobs.job(job_id)["status"] == "running"
    jobs.send(job_id)  # a live lease: the worker must leave it alone
    jobs.join()
    assert jobs.job(job_id)["status"] == "running" and provider.calls == 0

    _lapse_lease(jobs, job_id)
    assert sweeper.sweep_once(enqueue, sweep_files=False)["reclaimed"] == 1
    row = jobs.wait(job_id)
    jobs.join()

    assert row["status"] == "succeeded" and row["attempts"] == 2 and provider.calls == 1
    # the dead owner waking up can no longer settle or fail it
    assert not lifecycle.succeed(jobs.engine, dead, "dead-worker", [], 60)
    assert not lifecycle.fail(jobs.engine, dead, "dead-worker", "x", "late")
    assert jobs.kinds(job_id) == ["reserve", "settle"]
    after = assert_books_balance(jobs.engine, account.account_id)
    assert before.balance - after.balance == IMAGE_PRICE


def _lapse_lease(jobs: Jobs, job_id: str) -> None:
    """The dead owner's lease runs out (the clock of its row set back rather than the test waiting for it)."""
    with jobs.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET lease_until = :until WHERE id = :id"),
                     {"until": clock.now().timestamp() - 1, "id": job_id})


def test_files_a_killed_attempt_stored_and_never_recorded_are_removed_once_the_job_succeeds(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed between storing its files and committing left them on disk with no row
    naming them, so the expiry sweep (which works from rows) never removed them."""
    ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.3, stale_queued_seconds=3600)
    account = jobs.account()
    job_id = jobs.submit(account, enqueue=False)
    dead = lifecycle.claim(jobs.engine, job_id, "killed-worker", 0.3, None)
    assert dead is not None
    storage = LocalStorage(jobs.settings.storage_dir)
    orphan = f"{account.account_id}/{job_id}/file_killed.png"
    storage.put(orphan, render_png("half done", 8, 8), "image/png")  # then SIGKILL: no commit, no cleanup
    time.sleep(0.4)
    assert sweeper.sweep_once(enqueue, sweep_files=False)["reclaimed"] == 1
    row = jobs.wait(job_id)
    jobs.join()
    assert row["status"] == "succeeded" and row["attempts"] == 2
    [recorded] = jobs.files(job_id)
    assert jobs.stored_keys() == [recorded["storage_key"]]
    with clock.frozen(clock.now() + timedelta(days=jobs.settings.results_ttl_days + 1)):
        sweeper.sweep_once(enqueue, sweep_files=True)
    assert jobs.stored_keys() == []


def test_files_of_an_attempt_whose_success_failed_to_commit_are_deleted(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A settlement that fails for another reason than the database's absence rolled back: no row
    names the files it stored. They are deleted at once; the job runs again and succeeds."""
    ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.3, stale_queued_seconds=3600)
    real, calls = lifecycle.succeed, []

    def fails_once(*args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the settlement failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "succeed", fails_once)
    account = jobs.account()
    job_id = jobs.submit(account)
    deadline = time.monotonic() + 10
    while not calls:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(RuntimeError, match="the settlement failed"):
        jobs.join()  # the actor failed (Dramatiq logs it); the job's row is untouched
    assert jobs.stored_keys() == [] and jobs.job(job_id)["status"] == "running"  # its lease will lapse
    time.sleep(0.4)
    assert sweeper.sweep_once(enqueue, sweep_files=False)["reclaimed"] == 1
    row = jobs.wait(job_id)  # (joining the broker again would raise the first attempt's failure again)
    assert row["status"] == "succeeded" and jobs.stored_keys() == [jobs.files(job_id)[0]["storage_key"]]


def test_a_job_whose_workers_keep_dying_is_failed_and_refunded_once_its_attempts_are_used_up(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.2, stale_queued_seconds=3600, job_max_retries=1)
    allowed = 1 + 1 + execute.LOST_WORKER_ATTEMPTS  # the retries, plus what lost workers may take
    account = jobs.account()
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account, enqueue=False)
    for attempt in range(1, allowed + 1):  # each attempt's worker dies with the job (no lease renewal)
        claimed = lifecycle.claim(jobs.engine, job_id, f"doomed-{attempt}", 0.2, None, max_attempts=allowed)
        assert claimed is not None and claimed.attempts == attempt
        time.sleep(0.3)
    assert sweeper.sweep_once(enqueue, sweep_files=False)["reclaimed"] == 1
    row = jobs.wait(job_id)
    jobs.join()

    assert row["status"] == "failed" and row["error_code"] == "worker_lost" and row["attempts"] == allowed
    assert f"{allowed} time(s)" in row["error_message"] and provider.calls == 0  # not run once more
    assert jobs.kinds(job_id) == ["reserve", "release"] and jobs.hold(job_id)["status"] == "released"
    assert sweeper.sweep_once(enqueue, sweep_files=False)["reclaimed"] == 0  # no longer picked up
    assert assert_books_balance(jobs.engine, account.account_id).balance == before.balance


def test_a_job_cut_short_on_the_last_of_its_provider_retries_still_runs_once_more(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its retries were spent on provider errors; a restart then cut its last attempt: that is a
    lost worker, not a provider failure, and the job still finishes (SPEC: nothing is lost)."""
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.2, stale_queued_seconds=3600, job_max_retries=1)
    account = jobs.account()
    job_id = jobs.submit(account, enqueue=False)
    first = lifecycle.claim(jobs.engine, job_id, "w", 30, None)
    assert first is not None and lifecycle.requeue(jobs.engine, job_id, "w", "upstream_error", "503")  # retry 1
    assert lifecycle.claim(jobs.engine, job_id, "cut-short", 0.2, None) is not None  # the last attempt...
    time.sleep(0.3)  # ...whose worker was stopped
    assert sweeper.sweep_once(enqueue, sweep_files=False)["reclaimed"] == 1
    row = jobs.wait(job_id)
    jobs.join()
    assert row["status"] == "succeeded" and row["attempts"] == 3 and provider.calls == 1
    assert jobs.kinds(job_id) == ["reserve", "settle"]


def test_a_reclaimed_job_with_attempts_left_runs_again(make_jobs: JobsFactory,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.2, stale_queued_seconds=3600, job_max_retries=1)
    account = jobs.account()
    job_id = jobs.submit(account, enqueue=False)
    assert lifecycle.claim(jobs.engine, job_id, "doomed", 0.2, None, max_attempts=2) is not None
    time.sleep(0.3)
    assert sweeper.sweep_once(enqueue, sweep_files=False)["reclaimed"] == 1
    row = jobs.wait(job_id)
    jobs.join()
    assert row["status"] == "succeeded" and row["attempts"] == 2 and provider.calls == 1
    assert jobs.kinds(job_id) == ["reserve", "settle"]


def test_a_stalled_attempt_that_lost_its_job_deletes_only_its_own_files_not_the_winners(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    thawed = threading.Event()

    async def freeze_first(call: int, request: ImageRequest) -> list[MediaFile]:
        if call == 1:  # the whole thread stalls (as a frozen process): no lease renewal either
            assert thawed.wait(30)  # until the winner has finished, however slow the machine
        return pngs(request)

    provider = ScriptedImages(freeze_first).install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.5, stale_queued_seconds=3600)
    account = jobs.account()
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account)
    try:
        assert provider.started.wait(5)
        time.sleep(0.7)  # the stalled attempt's lease has lapsed
        assert sweeper.sweep_once(enqueue, sweep_files=False)["reclaimed"] == 1
        row = jobs.wait(job_id)
        assert row["status"] == "succeeded" and row["attempts"] == 2
    finally:
        thawed.set()  # (also when a check above failed: the stalled thread would hold the teardown 30 s)
    jobs.join()  # the stalled attempt wakes, stores its result, loses the job and cleans up

    assert provider.calls == 2
    [stored] = jobs.files(job_id)
    assert jobs.stored_keys() == [stored["storage_key"]]  # the winner's file is still there
    assert _decode(jobs.settings.storage_dir / stored["storage_key"]).size == (256, 256)
    assert jobs.kinds(job_id) == ["reserve", "settle"]
    after = assert_books_balance(jobs.engine, account.account_id)
    assert before.balance - after.balance == IMAGE_PRICE


def test_the_running_jobs_cap_keeps_extra_jobs_queued_never_rejected_and_all_of_them_finish(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    statuses_seen: set[str] = set()

    async def slow(call: int, request: ImageRequest) -> list[MediaFile]:
        await asyncio.sleep(0.3)
        return pngs(request)

    provider = ScriptedImages(slow).install(monkeypatch)
    monkeypatch.setattr(execute, "BUSY_RETRY_MS", 20)
    jobs = make_jobs(threads=6, jobs_running_free=2)
    account = jobs.account("free")  # 1,000 credits: exactly five images
    before = books(jobs.engine, account.account_id)

    ids = [jobs.submit(account, prompt=f"kite {i}") for i in range(5)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        statuses = _statuses_at_once(jobs, ids)  # one snapshot: read one by one, a job that ended
        running = statuses.count("running")      # and one that started between two reads both count
        assert running <= 2, statuses
        statuses_seen.update(statuses)
        if all(s == "succeeded" for s in statuses):
            break
        time.sleep(0.01)
    jobs.join()

    assert provider.max_running == 2  # the cap was reached and never exceeded
    assert "queued" in statuses_seen and not statuses_seen & {"failed", "canceled"}
    for job_id in ids:
        row = jobs.job(job_id)
        assert row["status"] == "succeeded" and row["charged"] == IMAGE_PRICE
        assert jobs.kinds(job_id) == ["reserve", "settle"]
    after = assert_books_balance(jobs.engine, account.account_id)
    assert before.balance - after.balance == 5 * IMAGE_PRICE and after.available == 0


def test_capped_jobs_start_in_the_order_they_were_submitted(make_jobs: JobsFactory,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each waiting job's message tries again every BUSY_RETRY_MS, and whichever came first used to
    take the freed slot: a Plus account's jobs started in the order 1, 2, 4, 8, 6, 3, 7, 5 (a jobs
    review). The oldest job waiting for the slot now takes it, whichever message comes."""
    first_may_end = threading.Event()

    async def slow(call: int, request: ImageRequest) -> list[MediaFile]:
        if call == 1:
            await asyncio.to_thread(first_may_end.wait, 20)
        await asyncio.sleep(0.05)
        return pngs(request)

    ScriptedImages(slow).install(monkeypatch)
    monkeypatch.setattr(execute, "BUSY_RETRY_MS", 20)
    jobs = make_jobs(threads=6, jobs_running_free=1)
    account = jobs.account("free")  # 1,000 credits: five images
    ids = [jobs.submit(account, prompt="kite 0")]
    until(lambda: jobs.job(ids[0])["status"] == "running")
    ids += [jobs.submit(account, prompt=f"kite {i}") for i in range(1, 5)]
    until(lambda: all(jobs.job(j)["enqueued_at"] > jobs.job(j)["created_at"] for j in ids[1:]))  # all waiting
    first_may_end.set()
    jobs.join()
    rows = [jobs.job(job_id) for job_id in ids]
    assert [r["status"] for r in rows] == ["succeeded"] * 5
    started = sorted(range(5), key=lambda i: rows[i]["started_at"])
    assert started == [0, 1, 2, 3, 4], [(i, rows[i]["started_at"]) for i in range(5)]


def _statuses_at_once(jobs: Jobs, ids: list[str]) -> list[str]:
    """Every job's status from one statement (one consistent snapshot of the table)."""
    marks = ", ".join(f":j{n}" for n in range(len(ids)))
    with jobs.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT status FROM jobs WHERE id IN ({marks})"),
                            {f"j{n}": job_id for n, job_id in enumerate(ids)}).all()
    assert len(rows) == len(ids)
    return [r[0] for r in rows]


@pytest.mark.parametrize("waiting", ["queued", "reclaimable"])
def test_a_job_waiting_for_a_free_slot_keeps_one_message_not_a_growing_swarm(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch, waiting: str) -> None:
    """While its account is at the running cap, a job's message comes back every BUSY_RETRY_MS. The
    sweeper must not take the waiting job for lost (stale queued, or a dead worker's lapsed lease)
    and add another copy on every sweep: the copies would multiply for as long as the job waits."""
    gate = threading.Event()

    async def gated(call: int, request: ImageRequest) -> list[MediaFile]:
        if request.prompt == "first":
            for _ in range(1000):  # at most 10 s
                if gate.is_set():
                    break
                await asyncio.sleep(0.01)
        return pngs(request)

    provider = ScriptedImages(gated).install(monkeypatch)
    monkeypatch.setattr(execute, "BUSY_RETRY_MS", 50)
    claims: dict[str, int] = {}
    real_claim = lifecycle.claim

    def counting_claim(engine: Any, job_id: str, *args: Any, **kwargs: Any) -> Any:
        claims[job_id] = claims.get(job_id, 0) + 1
        return real_claim(engine, job_id, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "claim", counting_claim)
    jobs = make_jobs(threads=4, jobs_running_free=1, stale_queued_seconds=0.1, job_lease_seconds=2)
    account = jobs.account("free")
    first = jobs.submit(account, prompt="first")
    assert provider.started.wait(5)
    if waiting == "queued":
        second = jobs.submit(account, prompt="second")
    else:  # a worker took it and died: its lease has lapsed
        second = jobs.submit(account, prompt="second", enqueue=False)
        assert real_claim(jobs.engine, second, "dead-worker", 0.05, None) is not None
        time.sleep(0.1)
        jobs.send(second)

    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # a busy sweeper, as in a process with a short interval
            sweeper.sweep_once(enqueue, sweep_files=False)
            time.sleep(0.05)
        assert jobs.job(first)["status"] == "running" and jobs.job(second)["status"] != "succeeded"
    finally:
        gate.set()
    jobs.wait(first), jobs.wait(second)
    jobs.join()

    # one copy coming back every 50 ms for 1.5 s is ~30 claims; a swarm grows quadratically
    assert claims[second] <= 60, claims[second]
    for job_id in (first, second):
        assert jobs.job(job_id)["status"] == "succeeded" and jobs.kinds(job_id) == ["reserve", "settle"]
    assert_books_balance(jobs.engine, account.account_id)


def test_a_message_for_a_job_this_database_does_not_have_is_dropped_with_a_warning(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A worker pointed at another database than the API's, sharing its Redis, took the API's job
    messages and dropped them without a word (found by an operator review)."""
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs()
    with caplog.at_level("WARNING", logger="helyx.worker"):
        jobs.send("job_not_in_this_database")
        jobs.join()
    assert provider.calls == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "helyx.worker" and r.levelname == "WARNING"]
    assert any("job_not_in_this_database" in w and "HELYX_DATABASE_URL" in w for w in warnings), warnings


def test_a_job_queued_past_its_holds_expiry_is_failed_not_run_free(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's hold lasts 7 days; one still queued then (workers down for a week) had its hold
    released by the sweeper and then ran, its charge having nothing to come out of: a free job
    (found by a money-path review). It is failed at its claim instead, the provider never called."""
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs(stale_queued_seconds=3600)
    account = jobs.account()
    before = books(jobs.engine, account.account_id)
    job_id = jobs.submit(account, enqueue=False)
    hold_id = jobs.hold(job_id)["id"]
    with jobs.engine.begin() as conn:  # a week later
        conn.execute(text("UPDATE holds SET expires_at = 0 WHERE id = :h"), {"h": hold_id})
    assert billing.expire_holds(jobs.engine) == 1
    jobs.send(job_id)
    row = jobs.wait(job_id)
    jobs.join()
    assert (row["status"], row["error_code"], row["charged"]) == ("failed", "reservation_expired", 0)
    assert provider.calls == 0 and jobs.stored_keys() == []
    assert jobs.kinds(job_id) == ["reserve", "expire"]
    assert assert_books_balance(jobs.engine, account.account_id).balance == before.balance
