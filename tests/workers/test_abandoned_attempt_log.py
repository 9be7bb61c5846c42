"""An attempt that finds its job no longer its own says why, at the level the cause deserves: a
cancel by the job's owner is ordinary (INFO; every cancel of a running job was a WARNING, found by
a README walkthrough), a job taken over by another worker is worth an operator's look (WARNING)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from sqlalchemy import text

from common.jobs import lifecycle
from tests.workers.helpers import Jobs
from tests.workers.scripted_images import ScriptedImages, held_until_released


def _abandoned_lines(caplog: pytest.LogCaptureFixture, job_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "helyx.worker" and getattr(r, "job_id", None) == job_id
            and getattr(r, "to", None) == "abandoned"]


def test_a_job_its_owner_canceled_is_logged_at_info(make_jobs: Callable[..., Jobs], monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    release, held = held_until_released()
    provider = ScriptedImages(held).install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=30)  # no renewal meanwhile: the attempt learns it when its result comes
    account = jobs.account()
    with caplog.at_level(logging.INFO, logger="helyx.worker"):
        job_id = jobs.submit(account)
        assert provider.started.wait(5)
        lifecycle.cancel(jobs.engine, account.account_id, job_id)
        release.set()
        jobs.join(timeout=10)
    [line] = _abandoned_lines(caplog, job_id)
    assert line.levelno == logging.INFO, line
    assert line.reason.startswith("canceled by its owner"), line.reason  # type: ignore[attr-defined]
    assert jobs.job(job_id)["status"] == "canceled"


def test_a_job_another_worker_took_over_is_logged_as_a_warning(
        make_jobs: Callable[..., Jobs], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    release, held = held_until_released()
    provider = ScriptedImages(held).install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=30)
    account = jobs.account()
    with caplog.at_level(logging.INFO, logger="helyx.worker"):
        job_id = jobs.submit(account)
        assert provider.started.wait(5)
        with jobs.engine.begin() as conn:  # as a worker that reclaimed it after this attempt's lease lapsed
            conn.execute(text("UPDATE jobs SET lease_owner = 'another-worker' WHERE id = :id"), {"id": job_id})
        release.set()
        jobs.join(timeout=10)
    [line] = _abandoned_lines(caplog, job_id)
    assert line.levelno == logging.WARNING, line
    assert line.reason.startswith("no longer this attempt's (running)"), line.reason  # type: ignore[attr-defined]
