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
