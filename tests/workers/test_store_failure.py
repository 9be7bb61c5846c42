"""A result that cannot be stored (a full disk, a bad mount) after the provider answered: the
paid provider call is not made again. The store is tried a few times with the media in hand;
then the job fails with `storage_failed` and a full refund, and what was stored of it is removed.
It was left `running`, reclaimed after its lease and run again up to seven times (seven paid
calls), then failed as `worker_lost`, its partial files on disk for good."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.jobs import lifecycle
from common.storage import LocalStorage
from tests.api.chat.helpers import assert_books_balance, books
from tests.workers.helpers import Jobs
from tests.workers.scripted_images import ScriptedImages
from workers import execute, sweeper
from workers.actors import enqueue

JobsFactory = Callable[..., Jobs]


def _failing_puts(monkeypatch: pytest.MonkeyPatch, fails: Callable[[int], bool]) -> list[int]:
    """LocalStorage.put raises ENOSPC on the calls (numbered from 1) for which `fails` says so."""
    real, calls = LocalStorage.put, []

    def put(self: LocalStorage, key: str, data: bytes, content_type: str) -> int:
        calls.append(1)
        if fails(len(calls)):
            raise OSError(28, "No space left on device")
        return real(self, key, data, content_type)

    monkeypatch.setattr(LocalStorage, "put", put)
    monkeypatch.setattr(execute, "STORE_BACKOFF_SECONDS", 0.01)
    return calls


def test_a_store_that_keeps_failing_fails_the_job_once_with_a_refund_and_leaves_no_file(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.3, stale_queued_seconds=3600, job_max_retries=1)
    puts = _failing_puts(monkeypatch, lambda call: call % 2 == 0)  # every job's first file stores, its second not
    account = jobs.account("plus")
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account, n=2)
    row = jobs.wait(job_id)
    jobs.join()
    time.sleep(0.4)  # a lease, had one been left running
    assert sweeper.sweep_once(enqueue, sweep_files=False)["reclaimed"] == 0

    assert (row["status"], row["error_code"], row["attempts"]) == ("failed", "storage_failed", 1)
    assert provider.calls == 1 and len(puts) == 2 * execute.STORE_TRIES
    assert jobs.kinds(job_id) == ["reserve", "release"]
    assert jobs.files(job_id) == [] and jobs.stored_keys() == []
    assert assert_books_balance(jobs.engine, account.account_id).balance == before.balance


def test_a_store_that_fails_once_succeeds_on_its_next_try_with_one_provider_call(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs()
    _failing_puts(monkeypatch, lambda call: call == 2)
    job_id = jobs.submit(jobs.account("plus"), n=2)
    row = jobs.wait(job_id)
    jobs.join()
    assert (row["status"], row["attempts"], provider.calls) == ("succeeded", 1, 1)
    assert sorted(f["storage_key"] for f in jobs.files(job_id)) == jobs.stored_keys()
    assert len(jobs.stored_keys()) == 2


def test_a_job_failed_for_used_up_attempts_leaves_no_file_its_attempts_stored(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.2, stale_queued_seconds=3600, job_max_retries=0)
    allowed = 1 + execute.LOST_WORKER_ATTEMPTS
    account = jobs.account()
    job_id = jobs.submit(account, enqueue=False)
    storage = LocalStorage(jobs.settings.storage_dir)
    for attempt in range(1, allowed + 1):  # each attempt stored a file, then its worker died
        assert lifecycle.claim(jobs.engine, job_id, f"doomed-{attempt}", 0.2, None, max_attempts=allowed)
        storage.put(f"{account.account_id}/{job_id}/file_{attempt}.png", b"\x89PNG half", "image/png")
        time.sleep(0.3)
    assert sweeper.sweep_once(enqueue, sweep_files=False)["reclaimed"] == 1
    row: dict[str, Any] = jobs.wait(job_id)
    jobs.join()
    assert (row["status"], row["error_code"]) == ("failed", "worker_lost")
    assert jobs.stored_keys() == []


def test_each_try_again_renews_the_lease_first(make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat stops with the provider call: tries that outlasted the lease let a sweeper
    reclaim the job, and the provider was paid a second time."""
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs()
    _failing_puts(monkeypatch, lambda call: call <= 2)
    real, renewals = lifecycle.renew, []

    def renew(engine: Any, job_id: str, owner: str, lease_seconds: float, progress: int | None = None) -> bool:
        renewals.append((job_id, lease_seconds))
        return real(engine, job_id, owner, lease_seconds, progress)

    monkeypatch.setattr(lifecycle, "renew", renew)
    job_id = jobs.submit(jobs.account("plus"))
    row = jobs.wait(job_id)
    jobs.join()
    assert (row["status"], row["attempts"], provider.calls) == ("succeeded", 1, 1)
    assert renewals == [(job_id, jobs.settings.job_lease_seconds)] * 2  # before the second and third tries


def test_a_job_canceled_while_its_store_is_retried_stops_trying(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=20.0, stale_queued_seconds=3600)
    account = jobs.account("plus")
    puts = _failing_puts(monkeypatch, lambda call: True)
    monkeypatch.setattr(execute, "STORE_BACKOFF_SECONDS", 0.5)
    job_id = jobs.submit(account)
    deadline = time.monotonic() + 10
    while not puts:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    lifecycle.cancel(jobs.engine, account.account_id, job_id)  # during the first backoff
    jobs.join()
    row = jobs.job(job_id)
    assert (row["status"], len(puts), provider.calls) == ("canceled", 1, 1)
    assert jobs.kinds(job_id) == ["reserve", "release"] and jobs.stored_keys() == []
