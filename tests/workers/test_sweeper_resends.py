"""The sweeper re-sends a dead worker's job once, not on every sweep: while every worker is busy
(a deep queue), each sweep added one more copy of its message, and one more warning line, for as
long as the job waited (found by an operator review)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from common import clock
from common.jobs import lifecycle
from tests.workers.scripted_images import ScriptedImages
from tests.workers.test_actors_stub import JobsFactory
from workers import sweeper


def test_a_dead_workers_job_is_sent_once_then_again_only_after_the_stale_wait(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.2, stale_queued_seconds=60)
    job_id = jobs.submit(jobs.account(), enqueue=False)
    sent: list[str] = []

    def busy_workers(job: str, job_type: str) -> None:  # the message is queued behind others: nobody claims
        sent.append(job)

    with clock.frozen(clock.now()) as frozen:
        assert lifecycle.claim(jobs.engine, job_id, "killed", 0.2, None) is not None
        frozen(timedelta(seconds=1))  # its lease has lapsed
        with caplog.at_level("WARNING", logger="helyx.sweeper"):
            reclaimed = [sweeper.sweep_once(busy_workers, sweep_files=False)["reclaimed"] for _ in range(5)]
        assert reclaimed == [1, 0, 0, 0, 0] and sent == [job_id]
        assert len([r for r in caplog.records if "reclaiming" in r.getMessage()]) == 1
        assert [(r.job_id, r.type) for r in caplog.records if r.getMessage() == "job lease lapsed: sent again"] == [
            (job_id, "image")]  # a line per job, with its id, for a log pipeline following jobs

        frozen(timedelta(seconds=61))  # still nobody took it: its message may be lost, so it is sent once more
        assert sweeper.sweep_once(busy_workers, sweep_files=False)["reclaimed"] == 1
        assert sweeper.sweep_once(busy_workers, sweep_files=False)["reclaimed"] == 0

        assert lifecycle.claim(jobs.engine, job_id, "killed-too", 0.2, None) is not None
        frozen(timedelta(seconds=1))  # the next worker died as well: found again at once, not a minute later
        assert sweeper.sweep_once(busy_workers, sweep_files=False)["reclaimed"] == 1
    assert sent == [job_id] * 3


def test_the_sweepers_memory_of_sent_jobs_does_not_grow_without_bound(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.2, stale_queued_seconds=60)
    account = jobs.account()
    with clock.frozen(clock.now()) as frozen:
        for _ in range(3):
            job_id = jobs.submit(account, enqueue=False)
            assert lifecycle.claim(jobs.engine, job_id, "killed", 0.2, None) is not None
            frozen(timedelta(seconds=1))
            sweeper.sweep_once(lambda job, job_type: None, sweep_files=False)
            assert lifecycle.cancel(jobs.engine, account.account_id, job_id)  # gone from the table's dead
        frozen(timedelta(seconds=121))
        sweeper.sweep_once(lambda job, job_type: None, sweep_files=False)
        assert sweeper.RESENT.remembered() == 0


def test_a_send_that_failed_is_tried_again_at_the_next_sweep_not_a_stale_wait_later(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job was marked as sent before its send: a Redis blip then held it back for
    HELYX_STALE_QUEUED_SECONDS instead of one sweep (found by a diff review)."""
    ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.2, stale_queued_seconds=60)
    job_id = jobs.submit(jobs.account(), enqueue=False)
    sent: list[str] = []

    def redis_blip(job: str, job_type: str) -> None:
        raise ConnectionError("Redis did not answer")

    with clock.frozen(clock.now()) as frozen:
        assert lifecycle.claim(jobs.engine, job_id, "killed", 0.2, None) is not None
        frozen(timedelta(seconds=1))
        with pytest.raises(ConnectionError):
            sweeper.sweep_once(redis_blip, sweep_files=False)
        frozen(timedelta(seconds=5))  # the next sweep
        assert sweeper.sweep_once(lambda job, job_type: sent.append(job), sweep_files=False)["reclaimed"] == 1
    assert sent == [job_id]
