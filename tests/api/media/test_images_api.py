"""POST /images/generations over HTTP (TestClient, a real dramatiq.Worker on the StubBroker): the OpenAI images
shape, b64_json, n, failures refunded, the bounded wait."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image

from common import clock
from common.errors import UpstreamError
from common.providers import simulated_media
from common.providers.base import MediaFile
from common.providers.google_errors import content_filtered
from tests.api.chat.helpers import assert_books_balance, books
from tests.api.media.conftest import Media
from tests.api.media.helpers import (
    IMAGES,
    error_of,
    png,
    poll_job,
)
from tests.workers.helpers import IMAGE_PRICE


def test_an_image_request_waits_for_the_job_and_answers_the_openai_images_shape(media: Media) -> None:
    account = media.account()
    response = media.client.post(IMAGES, headers=account.headers,
                                 json={"model": "nano-banana-pro", "prompt": "a lighthouse", "size": "256x256"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"created", "data", "size", "output_format", "helyx"}
    assert (body["size"], body["output_format"]) == ("256x256", "png")  # as GPT Image answers: what was made
    assert abs(body["created"] - clock.now().timestamp()) < 60
    [item] = body["data"]
    assert set(item) == {"url"}
    helyx = body["helyx"]
    assert helyx["job_id"].startswith("job_")
    assert helyx["credits_charged"] == 200 and helyx["credits_remaining"] == 800
    credits = media.client.get("/api/v1/credits", headers=account.headers).json()
    assert credits["remaining"] == 800
    row = media.jobs.job(helyx["job_id"])
    assert row["status"] == "succeeded" and row["charged"] == IMAGE_PRICE

    opened = media.client.get(item["url"])  # no Authorization header at all
    assert opened.status_code == 200, opened.text
    assert opened.headers["content-type"] == "image/png"
    assert png(opened.content).size == (256, 256)
    assert_books_balance(media.engine, account.account_id)


def test_b64_json_returns_the_stored_png_inline(media: Media) -> None:
    account = media.account()
    response = media.client.post(IMAGES, headers=account.headers,
                                 json={"prompt": "a lighthouse", "size": "512x512", "response_format": "b64_json"})

    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    assert set(item) == {"b64_json"}
    data = base64.b64decode(item["b64_json"], validate=True)
    assert png(data).size == (512, 512)
    [stored] = media.jobs.files(response.json()["helyx"]["job_id"])
    assert (media.settings.storage_dir / stored["storage_key"]).read_bytes() == data


def test_n_2_returns_two_different_images_and_charges_400(media: Media) -> None:
    account = media.account()
    before = books(media.engine, account.account_id)
    response = media.client.post(IMAGES, headers=account.headers,
                                 json={"prompt": "twin towers of toast", "size": "256x256", "n": 2})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["helyx"]["credits_charged"] == 400 and body["helyx"]["credits_remaining"] == 600
    contents = [media.client.get(item["url"]).content for item in body["data"]]
    assert len(contents) == 2 and contents[0] != contents[1]
    assert all(png(c).size == (256, 256) for c in contents)
    after = assert_books_balance(media.engine, account.account_id)
    assert before.balance - after.balance == 2 * IMAGE_PRICE


def test_the_size_and_format_said_are_those_of_the_image_made_not_those_asked(
        media: Media, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemini answers its own size for the nearest aspect ratio (the format said is the stored file's too)."""
    class OwnSize:
        async def generate_images(self, request: Any) -> Any:
            image = io.BytesIO()
            Image.new("RGB", (1264, 848)).save(image, "JPEG")
            return [MediaFile(image.getvalue(), "image/jpeg") for _ in range(request.n)]

    monkeypatch.setattr(simulated_media, "SimulatedImageProvider", lambda delay: OwnSize())
    account = media.account()
    response = media.client.post(IMAGES, headers=account.headers, json={"prompt": "wide", "size": "1536x1024"})
    assert response.status_code == 200, response.text
    assert (response.json()["size"], response.json()["output_format"]) == ("1264x848", "jpeg")


def test_an_image_job_that_fails_is_a_502_and_costs_nothing(media: Media, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        calls = 0

        async def generate_images(self, request: Any) -> Any:
            Broken.calls += 1
            raise UpstreamError("the provider is down", retryable=True, upstream_status=503)

    monkeypatch.setattr(simulated_media, "SimulatedImageProvider", lambda delay: Broken())
    account = media.account()
    before = books(media.engine, account.account_id)
    response = media.client.post(IMAGES, headers=account.headers, json={"prompt": "nothing", "size": "256x256"})

    error = error_of(response, 502)
    assert error["type"] == "upstream_error"
    assert Broken.calls == media.settings.job_max_retries + 1
    after = assert_books_balance(media.engine, account.account_id)
    assert after.balance == before.balance and after.available == before.available


def test_a_prompt_the_provider_refuses_is_a_400_and_costs_nothing(media: Media,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A content-policy refusal is the client's to mend, as OpenAI's images API answers it: a 400
    the SDK raises as BadRequestError (it was a 502, the README's rule for chat notwithstanding)."""
    class Refusing:
        async def generate_images(self, request: Any) -> Any:
            raise content_filtered("Gemini image generation: the provider blocked the prompt (SAFETY)")

    monkeypatch.setattr(simulated_media, "SimulatedImageProvider", lambda delay: Refusing())
    account = media.account()
    before = books(media.engine, account.account_id)
    response = media.client.post(IMAGES, headers=account.headers, json={"prompt": "forbidden", "size": "256x256"})

    error = error_of(response, 400)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "content_filtered", "prompt")
    assert "blocked the prompt" in error["message"] and "refunded" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    after = assert_books_balance(media.engine, account.account_id)
    assert after.balance == before.balance and after.available == before.available


def test_an_image_still_running_when_the_wait_ends_answers_202_with_the_job(
        make_media: Callable[..., Media]) -> None:
    media = make_media(simulated_job_seconds=1.0, image_wait_seconds=0.2)
    account = media.account()
    response = media.client.post(IMAGES, headers=account.headers, json={"prompt": "patience", "size": "256x256"})

    assert response.status_code == 202, response.text
    assert response.json()["object"] == "job" and response.json()["status"] in ("queued", "running")
    assert poll_job(media, account, response.json()["id"])["status"] == "succeeded"


def test_null_for_an_optional_image_field_is_its_default(media: Media) -> None:
    """The OpenAI SDK sends a `None` argument as null (`client.images.generate(n=None, size=None)`)."""
    account = media.account()
    response = media.client.post(IMAGES, headers=account.headers, json={
        "model": "nano-banana-pro", "prompt": "a lighthouse", "n": None, "size": None, "response_format": None,
        "webhook_url": None, "user": None})

    assert response.status_code == 200, response.text
    [item] = response.json()["data"]  # n: 1
    assert set(item) == {"url"}  # response_format: url
    assert png(media.client.get(item["url"]).content).size == (1024, 1024)  # size: 1024x1024
    assert response.json()["helyx"]["credits_charged"] == 200


def test_an_image_request_whose_job_is_canceled_while_it_waits_is_409_job_canceled_and_refunded(
        make_media: Callable[..., Media]) -> None:
    """Not a 502: the OpenAI SDK retries those, and would submit again what the user canceled."""
    media = make_media(simulated_job_seconds=3.0)
    account = media.account()
    before = books(media.engine, account.account_id)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(media.client.post, IMAGES, headers=account.headers,
                              json={"prompt": "never mind", "size": "256x256"})
        deadline = time.monotonic() + 10
        while not (jobs := media.client.get("/api/v1/jobs", headers=account.headers).json()["data"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert media.client.post(f"/api/v1/jobs/{jobs[0]['id']}/cancel", headers=account.headers).status_code == 200
        response = waiting.result(timeout=15)
    error = error_of(response, 409)
    assert error["code"] == "job_canceled" and response.headers["x-should-retry"] == "false"
    assert media.jobs.job(jobs[0]["id"])["status"] == "canceled"
    assert assert_books_balance(media.engine, account.account_id).balance == before.balance
