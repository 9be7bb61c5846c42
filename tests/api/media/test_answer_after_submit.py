"""A failure after a media job is made (its credits held) is answered so that the SDK does not
retry: the SDK sends no Idempotency-Key of its own, so each retry made, and charged, another job
(found by an SDK review: a storage failure under images.generate made 3 jobs, charged 3 times)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import psycopg
import pytest
from sqlalchemy import text

from api import job_flow
from api.routes import images as images_route
from common.errors import ServiceUnavailable
from common.jobs.submit import OutcomeUnknown
from tests.api.chat.helpers import assert_books_balance
from tests.api.media.conftest import Served
from tests.conftest import TestAccount, create_test_account
from tests.workers.helpers import IMAGE_PRICE, VIDEO_PRICE


def _jobs(served: Served, account: TestAccount) -> list[str]:
    with served.engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM jobs WHERE account_id = :a"), {"a": account.account_id})
                    .scalars())


def _the_one_job_named(served: Served, account: TestAccount, error: openai.APIStatusError, code: str,
                       status: int) -> str:
    """One job (the SDK did not retry), named by the error, which told the SDK not to retry."""
    (job_id,) = _jobs(served, account)
    assert (error.status_code, error.response.headers["x-should-retry"]) == (status, "false")
    assert error.code == code and job_id in error.message
    return job_id


def test_lost_files_under_images_generate_make_one_job_and_one_charge(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    def files_gone(*args: Any, **kwargs: Any) -> Any:
        raise FileNotFoundError("the storage lost the file")

    monkeypatch.setattr(images_route, "images_response", files_gone)
    account = create_test_account(served.engine, "free")
    before = assert_books_balance(served.engine, account.account_id).balance
    with served.sdk(account, max_retries=2) as client, pytest.raises(openai.InternalServerError) as raised:
        client.images.generate(model="nano-banana-pro", prompt="a fox", size="256x256",
                               response_format="b64_json")
    job_id = _the_one_job_named(served, account, raised.value, "job_answer_failed", 500)
    assert finished_status(served, job_id) == "succeeded"
    after = assert_books_balance(served.engine, account.account_id)
    assert before - after.balance == IMAGE_PRICE  # the job, charged once


@pytest.mark.parametrize("failure", [ServiceUnavailable("The service is temporarily unavailable, try again."),
                                     psycopg.OperationalError("connection to server lost")])
def test_a_database_failure_reading_back_a_new_video_makes_one_job(
        served: Served, monkeypatch: pytest.MonkeyPatch, failure: Exception) -> None:
    async def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise failure

    monkeypatch.setattr(job_flow, "read", unreadable)
    account = create_test_account(served.engine, "pro")
    with served.sdk(account, max_retries=2) as client, pytest.raises(openai.InternalServerError) as raised:
        client.videos.create(model="vo3", prompt="a fox", seconds="4")
    job_id = _the_one_job_named(served, account, raised.value, "job_answer_failed", 503)
    monkeypatch.undo()
    assert finished_status(served, job_id) == "succeeded"
    held_or_charged = assert_books_balance(served.engine, account.account_id)
    assert held_or_charged.held == 0  # settled: charged VIDEO_PRICE once (the books balance)
    with served.engine.connect() as conn:
        assert conn.execute(text("SELECT charged FROM jobs WHERE id = :j"), {"j": job_id}).scalar_one() \
            == VIDEO_PRICE


def finished_status(served: Served, job_id: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        with served.engine.connect() as conn:
            status = conn.execute(text("SELECT status FROM jobs WHERE id = :j"), {"j": job_id}).scalar_one()
        if status in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
            return str(status)
        time.sleep(0.05)


def test_images_generate_waits_through_a_database_blip_and_answers_the_images(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the job while it runs: a lost connection is read again until the wait's deadline."""
    read, failures = job_flow.read, []

    async def blinking(*args: Any, **kwargs: Any) -> Any:
        if len(failures) < 2:
            failures.append(1)
            raise psycopg.OperationalError("connection to server lost")
        return await read(*args, **kwargs)

    monkeypatch.setattr(job_flow, "read", blinking)
    account = create_test_account(served.engine, "free")
    with served.sdk(account) as client:
        answer = client.images.generate(model="nano-banana-pro", prompt="a fox", size="256x256",
                                        response_format="b64_json")
    assert len(failures) == 2 and answer.data and answer.data[0].b64_json
    assert len(_jobs(served, account)) == 1


def _cut_now() -> Any:
    """What uvicorn does to a request still running at the end of its shutdown grace."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    return asyncio.sleep(0)


@pytest.mark.parametrize("route", ["image", "image_async", "video"])
def test_a_shutdown_cut_after_the_job_is_made_is_not_retried(
        served: Served, monkeypatch: pytest.MonkeyPatch, route: str) -> None:
    """It answered 503 server_shutdown, "Please retry.", and each SDK retry made another job (an
    SDK retry hunt): now the job is named and the SDK told not to retry."""
    async def cut(*args: Any, **kwargs: Any) -> Any:
        await _cut_now()

    monkeypatch.setattr(job_flow, "read", cut)
    account = create_test_account(served.engine, "pro")
    with served.sdk(account, max_retries=2) as client, pytest.raises(openai.InternalServerError) as raised:
        if route == "video":
            client.videos.create(model="vo3", prompt="a fox", seconds="4")
        else:
            client.images.generate(model="nano-banana-pro", prompt="a fox", size="256x256",
                                   extra_headers={"Prefer": "respond-async"} if route == "image_async" else None)
    _the_one_job_named(served, account, raised.value, "job_answer_failed", 503)


def test_a_shutdown_cut_while_the_jobs_statement_runs_says_it_may_be_made(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = job_flow.run_in_threadpool, []

    async def statement_then_cut(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # the submission's trip (the statement committed in its thread meanwhile)
            await _cut_now()
        return result

    monkeypatch.setattr(job_flow, "run_in_threadpool", statement_then_cut)
    account = create_test_account(served.engine, "free")
    with served.sdk(account, max_retries=2) as client, pytest.raises(openai.InternalServerError) as raised:
        client.images.generate(model="nano-banana-pro", prompt="a fox", size="256x256")
    _the_one_job_named(served, account, raised.value, "job_unconfirmed", 503)


def test_a_submission_the_database_did_not_confirm_is_named_and_not_retried(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply lost after the job's statement committed (common.jobs.submit.OutcomeUnknown)."""
    real = job_flow.submit_job

    def committed_then_lost(*args: Any, **kwargs: Any) -> Any:
        made = real(*args, **kwargs)
        raise OutcomeUnknown(made.job_id)

    monkeypatch.setattr(job_flow, "submit_job", committed_then_lost)
    account = create_test_account(served.engine, "free")
    with served.sdk(account, max_retries=2) as client, pytest.raises(openai.InternalServerError) as raised:
        client.images.generate(model="nano-banana-pro", prompt="a fox", size="256x256")
    job_id = _the_one_job_named(served, account, raised.value, "job_unconfirmed", 503)
    with served.engine.connect() as conn:  # made, and left for the sweeper to send (the reply was lost)
        assert conn.execute(text("SELECT status FROM jobs WHERE id = :j"), {"j": job_id}).scalar_one() == "queued"


def test_with_the_callers_idempotency_key_the_sdk_retries_and_gets_the_one_job(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK sends the caller's headers again on its retries: with an Idempotency-Key a retry
    returns the job made, charged once, so the failure is left retryable (a review of the first
    version, which told the SDK not to)."""
    read, failures = job_flow.read, []

    async def fails_once(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise psycopg.OperationalError("connection to server lost")
        return await read(*args, **kwargs)

    monkeypatch.setattr(job_flow, "read", fails_once)
    account = create_test_account(served.engine, "pro")
    with served.sdk(account, max_retries=2) as client:
        video = client.videos.create(model="vo3", prompt="a fox", seconds="4",
                                     extra_headers={"Idempotency-Key": "fox-video-1"})
    (job_id,) = _jobs(served, account)
    assert video.id == job_id and failures == [1]
