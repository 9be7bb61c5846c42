"""A webhook's file links are absolute, so that its receiver can open them: with HELYX_PUBLIC_URL
they use it; without it, the base URL the job was submitted to (kept with the job's params under
a private key that the job object never shows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from common.jobs.submit import submit_job
from common.webhooks import DeliveryResult
from tests.workers.helpers import IMAGE_PRICE, Jobs
from workers import actors, notify

PARAMS = {"prompt": "a red kite", "n": 1, "width": 256, "height": 256, "response_format": "url"}


def _delivered(make_jobs: Callable[..., Jobs], monkeypatch: pytest.MonkeyPatch, base_url: str | None,
               **settings: Any) -> dict[str, Any]:
    """Run one image job with a webhook; the payload handed to `deliver` (no network call)."""
    payloads: list[dict[str, Any]] = []

    def deliver(url: str, payload: dict[str, Any], **kwargs: Any) -> DeliveryResult:
        payloads.append(payload)
        return DeliveryResult(True, 1, 204, None, kwargs["webhook_id"])

    monkeypatch.setattr(notify, "deliver", deliver)
    jobs = make_jobs(**settings)
    account = jobs.account("free")
    job_id = submit_job(jobs.engine, jobs.principal(account), job_type="image", model="nano-banana-pro",
                        params=PARAMS, price=IMAGE_PRICE, tz=jobs.settings.timezone,
                        webhook_url="https://hooks.example.com/helyx", base_url=base_url).job_id
    actors.enqueue(job_id, "image")
    jobs.wait(job_id)
    jobs.join()
    [payload] = payloads
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job_id
    assert payload["data"]["params"] == PARAMS  # the private base URL is not echoed
    return payload


def _file_url(payload: dict[str, Any]) -> str:
    [file] = payload["data"]["result"]["files"]
    return file["url"]  # type: ignore[no-any-return]


def test_without_a_public_url_the_links_use_the_base_the_job_was_submitted_to(
        make_jobs: Callable[..., Jobs], monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _delivered(make_jobs, monkeypatch, "https://gateway.example:8443", public_url=None)
    url = _file_url(payload)
    assert url.startswith("https://gateway.example:8443/api/v1/files/file_"), url
    assert "/content?expires=" in url


def test_a_configured_public_url_wins_over_the_submitting_requests_host(
        make_jobs: Callable[..., Jobs], monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _delivered(make_jobs, monkeypatch, "http://10.0.0.7:8000", public_url="https://api.example.com")
    assert _file_url(payload).startswith("https://api.example.com/api/v1/files/file_")


def test_each_retry_of_a_webhook_is_a_message_of_its_own_not_a_sleep_in_the_worker(
        make_jobs: Callable[..., Jobs], monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver that failed held a worker thread for every try and every backoff in between
    (about two minutes with the defaults). Each try is now one message; a retryable failure sends
    the next one, delayed, and returns; a final failure or the last try records the outcome."""
    from sqlalchemy import text

    tries: list[dict[str, Any]] = []

    def deliver(url: str, payload: dict[str, Any], **kwargs: Any) -> DeliveryResult:
        tries.append(kwargs)
        return DeliveryResult(False, kwargs["max_attempts"], 503, "HTTP 503", kwargs["webhook_id"], retry_after=3)

    monkeypatch.setattr(notify, "deliver", deliver)
    jobs = make_jobs(webhook_max_attempts=3, webhook_backoff_seconds=1)
    account = jobs.account("free")
    job_id = submit_job(jobs.engine, jobs.principal(account), job_type="image", model="nano-banana-pro",
                        params=PARAMS, price=IMAGE_PRICE, tz=jobs.settings.timezone,
                        webhook_url="https://hooks.example.com/helyx").job_id
    scheduled: list[tuple[tuple[Any, ...], int]] = []

    def retry(*, args: tuple[Any, ...], delay: int) -> None:
        scheduled.append((args, delay))

    def status() -> Any:
        with jobs.engine.connect() as conn:
            return conn.execute(text("SELECT webhook_status FROM jobs WHERE id = :id"), {"id": job_id}).scalar()

    notify.send_webhook(job_id, 1, retry=retry)
    assert [t["max_attempts"] for t in tries] == [1] and scheduled == [((job_id, 2), 3000)]  # Retry-After wins
    assert status() == "pending"
    notify.send_webhook(job_id, 2, retry=retry)
    assert scheduled[-1] == ((job_id, 3), 3000) and tries[-1]["earlier_attempts"] == 1
    notify.send_webhook(job_id, 3, retry=retry)  # the last try: no more messages, the outcome recorded
    assert len(scheduled) == 2 and len(tries) == 3 and status() == "failed"
    notify.send_webhook(job_id, 1, retry=retry)  # a late duplicate message finds it settled
    assert len(tries) == 3


def test_a_webhook_that_finally_fails_says_why_in_the_log(make_jobs: Callable[..., Jobs],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The reason (for a refused address, the address) is for the operator's log; the final line
    gave only "failed after N attempt(s)" (a review)."""
    from common.jobs.submit import submit_job as submit

    def deliver(url: str, payload: dict[str, Any], **kwargs: Any) -> DeliveryResult:
        return DeliveryResult(False, 0, None, "webhook_url host 'hooks.example.com' resolves to a non-public "
                              "address (10.1.2.3)", kwargs["webhook_id"], final=True)

    monkeypatch.setattr(notify, "deliver", deliver)
    jobs = make_jobs()
    account = jobs.account("free")
    job_id = submit(jobs.engine, jobs.principal(account), job_type="image", model="nano-banana-pro", params=PARAMS,
                    price=IMAGE_PRICE, tz=jobs.settings.timezone, webhook_url="https://hooks.example.com/helyx").job_id
    with caplog.at_level("INFO", logger="helyx.webhooks"):
        notify.send_webhook(job_id, 1, retry=lambda **_: None)
    assert any("failed after" in r.getMessage() and "10.1.2.3" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
