"""A job the shutdown grace cut off is queued again at once, not left `running` until its lease
lapses: meanwhile it counted against its account's running cap, and the queued jobs behind it
waited as long after a restart (found by a production-shape walkthrough)."""

from __future__ import annotations

import pytest

from common.jobs import lifecycle
from common.providers.simulated_media import render_png
from common.storage import LocalStorage
from tests.workers.scripted_images import ScriptedImages
from tests.workers.test_actors_stub import JobsFactory
from workers import execute
from workers.actors import enqueue


def test_a_job_cut_off_at_shutdown_is_queued_again_at_once_sent_and_charged_once(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=600, stale_queued_seconds=3600)
    job_id = jobs.submit(jobs.account(), enqueue=False)
    assert lifecycle.claim(jobs.engine, job_id, "stopping-worker", 600, None) is not None
    monkeypatch.setitem(execute.RUNNING, (job_id, "stopping-worker"), "image")  # its thread, cut off by the grace
    sent: list[tuple[str, str]] = []

    with caplog.at_level("WARNING", logger="helyx.worker"):
        execute.cut_off_at_shutdown(lambda job, job_type: sent.append((job, job_type)))

    row = jobs.job(job_id)
    # and its attempt taken back: seven restarts used up a job's attempts (worker_lost), a self-contained review
    assert (row["status"], row["lease_owner"], row["lease_until"], row["attempts"]) == ("queued", None, None, 0)
    assert sent == [(job_id, "image")]
    assert any(f"queued again, to run once more and be charged once: {job_id}" in r.getMessage()
               for r in caplog.records)
    [line] = [r for r in caplog.records if r.getMessage() == "job transition"]  # a log pipeline follows job_id
    assert (line.job_id, line.type, line.to, line.reason) == (job_id, "image", "queued", "server_shutdown")
    enqueue(job_id, "image")  # what the sent message does: the next worker runs it, once
    row = jobs.wait(job_id)
    jobs.join()
    assert row["status"] == "succeeded" and row["attempts"] == 1 and provider.calls == 1
    assert jobs.kinds(job_id) == ["reserve", "settle"]


def test_files_an_attempt_cut_off_at_shutdown_stored_and_never_recorded_are_removed(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cut attempt's count is given back, so its rerun is attempt 1 again: the orphans were looked
    for only from attempt 2 on, and these stayed on disk with no row naming them (a diff review)."""
    ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=600, stale_queued_seconds=3600)
    account = jobs.account()
    job_id = jobs.submit(account, enqueue=False)
    assert lifecycle.claim(jobs.engine, job_id, "stopping-worker", 600, None) is not None
    LocalStorage(jobs.settings.storage_dir).put(f"{account.account_id}/{job_id}/file_cut.png",
                                                render_png("half done", 8, 8), "image/png")  # stored, then cut off
    monkeypatch.setitem(execute.RUNNING, (job_id, "stopping-worker"), "image")
    execute.cut_off_at_shutdown(lambda job, job_type: None)
    enqueue(job_id, "image")
    row = jobs.wait(job_id)
    jobs.join()
    assert row["status"] == "succeeded" and row["attempts"] == 1
    [recorded] = jobs.files(job_id)
    assert jobs.stored_keys() == [recorded["storage_key"]]


def test_a_job_no_longer_ours_at_shutdown_is_left_as_it_is(make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=600, stale_queued_seconds=3600)
    account = jobs.account()
    job_id = jobs.submit(account, enqueue=False)
    assert lifecycle.claim(jobs.engine, job_id, "stopping-worker", 600, None) is not None
    assert lifecycle.cancel(jobs.engine, account.account_id, job_id)  # canceled while it ran
    monkeypatch.setitem(execute.RUNNING, (job_id, "stopping-worker"), "image")
    sent: list[tuple[str, str]] = []
    with caplog.at_level("WARNING", logger="helyx.worker"):
        execute.cut_off_at_shutdown(lambda job, job_type: sent.append((job, job_type)))
    assert jobs.job(job_id)["status"] == "canceled" and sent == []
    assert jobs.kinds(job_id) == ["reserve", "release"]
    assert not any("queued again" in r.getMessage() for r in caplog.records)  # nothing was


def test_two_attempts_of_one_job_in_one_process_are_both_known() -> None:
    """An attempt whose lease lapsed while it stalled, and the one that reclaimed the job in the
    same process: the first one's end forgot the second (the table was keyed by job id alone)."""
    job = lifecycle.ClaimedJob("job_twice", "acct", "image", "nano-banana-pro", {}, 1, "hold", 200)
    with execute._running(job, "stalled"):
        with execute._running(job, "reclaimer"):
            pass
        assert ("job_twice", "stalled") in execute.RUNNING
    with execute._running(job, "reclaimer"):
        with execute._running(job, "stalled"):
            pass
        assert execute.RUNNING == {("job_twice", "reclaimer"): "image"}
    assert execute.RUNNING == {}


def test_the_cut_attempt_finishing_after_its_job_was_given_back_neither_charges_nor_fails_it(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cut attempt's thread lives on until the process exits: if it finishes meanwhile, its
    settlement (or failure) must find the job no longer its own; the next attempt charges once."""
    ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=600, stale_queued_seconds=3600)
    job_id = jobs.submit(jobs.account(), enqueue=False)
    cut = lifecycle.claim(jobs.engine, job_id, "stopping-worker", 600, None)
    assert cut is not None
    monkeypatch.setitem(execute.RUNNING, (job_id, "stopping-worker"), "image")
    execute.cut_off_at_shutdown()

    assert not lifecycle.succeed(jobs.engine, cut, "stopping-worker", [], 60)
    assert not lifecycle.fail(jobs.engine, cut, "stopping-worker", "x", "late")
    assert jobs.kinds(job_id) == ["reserve"] and jobs.job(job_id)["status"] == "queued"
    enqueue(job_id, "image")
    row = jobs.wait(job_id)
    jobs.join()
    assert row["status"] == "succeeded" and jobs.kinds(job_id) == ["reserve", "settle"]
