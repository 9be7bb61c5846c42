"""The media routes over HTTP (TestClient) with a real dramatiq.Worker on the StubBroker: images,
videos, jobs, signed file URLs, validation that leaves no trace, plan gates and Idempotency-Key."""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import av
import pytest
from PIL import Image
from sqlalchemy import text

from api.routes import videos as videos_route
from common import clock
from common.errors import UpstreamError
from common.jobs import lifecycle, submit
from common.providers import simulated_media
from common.signing import sign_file_url
from tests.api.chat.helpers import assert_books_balance, books
from tests.api.media.conftest import Media
from tests.conftest import TestAccount
from tests.workers.helpers import IMAGE_PRICE, VIDEO_PRICE

IMAGES = "/api/v1/images/generations"
PNG_BYTES = simulated_media.render_png("a reference", 64, 64)
ASYNC = {"Prefer": "respond-async"}
VIDEO_STATUSES = {"queued", "in_progress", "completed", "failed"}


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def mp4_facts(data: bytes) -> tuple[int, int, int, float]:
    """(width, height, frames, seconds) of an MP4, by decoding every frame with PyAV."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        seconds = float(frames[-1].pts * stream.time_base + (stream.time_base * (frames[1].pts - frames[0].pts)))
        return frames[0].width, frames[0].height, len(frames), seconds


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}, body
    return body["error"]  # type: ignore[no-any-return]


def poll_job(media: Media, account: TestAccount, job_id: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = media.client.get(f"/api/v1/jobs/{job_id}", headers=account.headers).json()
        if view["status"] in ("succeeded", "failed", "canceled"):
            return view  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, view
        time.sleep(0.02)


def poll_video(media: Media, account: TestAccount, video_id: str, timeout: float = 20.0
               ) -> tuple[dict[str, Any], list[str]]:
    """Retrieve until completed or failed; every answer's status and poll header are checked."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        response = media.client.get(f"/api/v1/videos/{video_id}", headers=account.headers)
        assert response.status_code == 200, response.text
        view = response.json()
        assert view["status"] in VIDEO_STATUSES, view
        unfinished = view["status"] in ("queued", "in_progress")
        assert ("openai-poll-after-ms" in response.headers) == unfinished, (view, response.headers)
        if unfinished:
            assert int(response.headers["openai-poll-after-ms"]) > 0
        seen.append(view["status"])
        if not unfinished:
            return view, seen
        assert time.monotonic() < deadline, view
        time.sleep(0.05)


# --- images ----------------------------------------------------------------------------------------


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


def test_prefer_respond_async_answers_202_with_the_job_which_jobs_then_shows_finished(
        make_media: Callable[..., Media]) -> None:
    media = make_media(simulated_job_seconds=0.5)
    account = media.account()
    response = media.client.post(IMAGES, headers={**account.headers, **ASYNC},
                                 json={"prompt": "a slow sunrise", "size": "256x256"})

    assert response.status_code == 202, response.text
    job = response.json()
    assert job["object"] == "job" and job["type"] == "image" and job["model"] == "nano-banana-pro"
    assert job["status"] in ("queued", "running") and job["result"] is None and job["error"] is None
    assert job["helyx"]["job_id"] == job["id"] and job["helyx"]["credits_charged"] == 0
    assert job["helyx"]["credits_remaining"] == 800  # the 200 are held

    done = poll_job(media, account, job["id"])
    assert done["status"] == "succeeded" and done["progress"] == 100
    assert done["helyx"]["credits_charged"] == 200
    [file] = done["result"]["files"]
    assert file["content_type"] == "image/png" and file["bytes"] > 0
    assert png(media.client.get(file["url"]).content).size == (256, 256)
    listed = media.client.get("/api/v1/jobs", headers=account.headers).json()
    assert listed["object"] == "list" and [j["id"] for j in listed["data"]] == [job["id"]]
    assert listed["data"][0]["status"] == "succeeded"
    assert_books_balance(media.engine, account.account_id)


def test_another_accounts_job_and_file_are_404_never_403(media: Media) -> None:
    owner, stranger = media.account(), media.account()
    job_id = media.client.post(IMAGES, headers=owner.headers,
                               json={"prompt": "mine", "size": "256x256"}).json()["helyx"]["job_id"]
    file_id = media.client.get(f"/api/v1/jobs/{job_id}", headers=owner.headers).json()["result"]["files"][0]["id"]

    for method, path in [("GET", f"/api/v1/jobs/{job_id}"), ("POST", f"/api/v1/jobs/{job_id}/cancel"),
                         ("GET", f"/api/v1/files/{file_id}/content"), ("GET", f"/api/v1/videos/{job_id}"),
                         ("DELETE", f"/api/v1/videos/{job_id}")]:
        error = error_of(media.client.request(method, path, headers=stranger.headers), 404)
        assert error["type"] == "not_found_error"
    assert media.client.get("/api/v1/jobs", headers=stranger.headers).json()["data"] == []
    # an image job is not a video, even for its owner
    assert error_of(media.client.get(f"/api/v1/videos/{job_id}", headers=owner.headers), 404)
    assert media.client.get(f"/api/v1/files/{file_id}/content", headers=owner.headers).status_code == 200
    assert media.jobs.job(job_id)["status"] == "succeeded"


def test_a_file_whose_bytes_are_gone_is_404_file_not_found_not_a_500(media: Media) -> None:
    account = media.account("plus")
    image = media.client.post(IMAGES, headers=account.headers, json={"prompt": "gone", "size": "256x256"}).json()
    video = media.client.post("/api/v1/videos", headers=account.headers,
                              json={"model": "vo3", "prompt": "gone too", "seconds": "4", "size": "1280x720"}).json()
    poll_video(media, account, video["id"])
    for job_id in (image["helyx"]["job_id"], video["id"]):
        for stored in media.jobs.files(job_id):  # swept from disk (or cleared by hand), the row still there
            (media.jobs.settings.storage_dir / stored["storage_key"]).unlink()

    for url in (image["data"][0]["url"], f"/api/v1/videos/{video['id']}/content"):
        error = error_of(media.client.get(url, headers=account.headers), 404)
        assert error["code"] == "file_not_found" and error["type"] == "not_found_error"
        assert media.client.head(url, headers=account.headers).status_code == 404


def test_a_file_id_cannot_be_probed_without_a_key(media: Media) -> None:
    """Without a valid signature or key the answer is 401 whether or not the file exists."""
    owner = media.account()
    image = media.client.post(IMAGES, headers=owner.headers, json={"prompt": "mine", "size": "256x256"}).json()
    url = image["data"][0]["url"]
    real = url.split("/files/", 1)[1].split("/", 1)[0]
    revoked = media.client.post("/api/v1/keys", headers=owner.headers, json={"name": "old"}).json()
    assert media.client.delete(f"/api/v1/keys/{revoked['id']}", headers=owner.headers).status_code == 200
    for file_id in (real, "file_000000000000000000000000"):
        path = f"/api/v1/files/{file_id}/content"
        assert error_of(media.client.get(path), 401)["code"] == "missing_api_key"
        assert error_of(media.client.get(path + "?expires=1&signature=forged"), 401)["code"] == "expired_link"
        assert error_of(media.client.get(path + f"?expires={2**40}&signature=forged"), 401)["code"] == \
            "invalid_signature"
        bad = {"Authorization": f"Bearer {revoked['key']}"}
        assert error_of(media.client.get(path, headers=bad), 401)["code"] == "revoked_api_key"
    assert error_of(media.client.get("/api/v1/files/file_000000000000000000000000/content",
                                     headers=owner.headers), 404)["code"] == "file_not_found"
    assert media.client.get(url).status_code == 200
    head = media.client.head(url)  # a signed link answers HEAD too, with the same headers and no body
    assert (head.status_code, head.content, head.headers["content-type"]) == (200, b"", "image/png")
    assert int(head.headers["content-length"]) == len(media.client.get(url).content)
    assert media.client.head(f"/api/v1/files/{real}/content").status_code == 401


def test_a_tampered_or_expired_signature_needs_the_owners_key(media: Media) -> None:
    owner, stranger = media.account(), media.account()
    first = media.client.post(IMAGES, headers=owner.headers, json={"prompt": "one", "size": "256x256"}).json()
    second = media.client.post(IMAGES, headers=owner.headers, json={"prompt": "two", "size": "256x256"}).json()
    url, other_url = first["data"][0]["url"], second["data"][0]["url"]
    assert media.client.get(url).status_code == 200

    path, query = url.split("?", 1)
    signature = query.split("signature=", 1)[1]
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    tampered = f"{path}?{query.replace(signature, flipped)}"
    error = error_of(media.client.get(tampered), 401)
    assert error["type"] == "authentication_error" and error["code"] == "invalid_signature"
    assert "signature is not valid" in error["message"]
    assert media.client.get(tampered, headers=owner.headers).status_code == 200
    error_of(media.client.get(tampered, headers=stranger.headers), 404)
    # a valid signature for another file
    other_path = other_url.split("?", 1)[0]
    error_of(media.client.get(f"{other_path}?{query}"), 401)
    # an expired one: the URL handed out stops working after its TTL ...
    with clock.frozen(clock.now() + timedelta(seconds=media.settings.signed_url_ttl_seconds + 1)):
        expired = error_of(media.client.get(url), 401)
        assert expired["code"] == "expired_link" and "fetch the job (or video) again" in expired["message"]
    # ... and a correctly signed URL whose time has passed is refused
    file_id = path.split("/files/", 1)[1].split("/", 1)[0]
    secret = media.client.app.state.services.signing_secret  # type: ignore[attr-defined]
    stale = sign_file_url("/api/v1", file_id, int(clock.now().timestamp()) - 1, secret)
    error_of(media.client.get(stale), 401)
    assert media.client.get(stale, headers=owner.headers).status_code == 200


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


def test_an_image_still_running_when_the_wait_ends_answers_202_with_the_job(
        make_media: Callable[..., Media]) -> None:
    media = make_media(simulated_job_seconds=1.0, image_wait_seconds=0.2)
    account = media.account()
    response = media.client.post(IMAGES, headers=account.headers, json={"prompt": "patience", "size": "256x256"})

    assert response.status_code == 202, response.text
    assert response.json()["object"] == "job" and response.json()["status"] in ("queued", "running")
    assert poll_job(media, account, response.json()["id"])["status"] == "succeeded"


def test_cancel_of_a_finished_job_is_409_and_a_second_cancel_refunds_nothing_more(
        make_media: Callable[..., Media]) -> None:
    media = make_media(simulated_job_seconds=0.5)
    account = media.account()
    finished = media.client.post(IMAGES, headers=account.headers, json={"prompt": "done", "size": "256x256"})
    finished_id = finished.json()["helyx"]["job_id"]
    error = error_of(media.client.post(f"/api/v1/jobs/{finished_id}/cancel", headers=account.headers), 409)
    assert error["type"] == "conflict_error"
    assert media.jobs.job(finished_id)["status"] == "succeeded"

    pending = media.client.post(IMAGES, headers={**account.headers, **ASYNC},
                                json={"prompt": "undo", "size": "256x256"}).json()
    for _ in range(2):
        again = media.client.post(f"/api/v1/jobs/{pending['id']}/cancel", headers=account.headers)
        assert again.status_code == 200 and again.json()["status"] == "canceled"
    media.jobs.join()
    assert media.jobs.kinds(pending["id"]) == ["reserve", "release"]
    assert media.jobs.kinds(finished_id) == ["reserve", "settle"]
    after = assert_books_balance(media.engine, account.account_id)
    assert after.balance == 800_000_000


# --- videos ----------------------------------------------------------------------------------------


def test_a_video_created_as_json_polls_to_completed_and_its_content_is_an_mp4_of_the_right_size(
        make_media: Callable[..., Media]) -> None:
    media = make_media(simulated_job_seconds=0.8)
    account = media.account("plus")
    before = books(media.engine, account.account_id)
    response = media.client.post("/api/v1/videos", headers=account.headers,
                                 json={"model": "vo3", "prompt": "a paper boat", "seconds": "4", "size": "1280x720"})

    assert response.status_code == 200, response.text
    video = response.json()
    assert video["object"] == "video" and video["model"] == "vo3"
    assert video["status"] in ("queued", "in_progress")
    assert video["seconds"] == "4" and video["size"] == "1280x720" and video["error"] is None
    assert int(response.headers["openai-poll-after-ms"]) > 0
    assert video["helyx"]["job_id"] == video["id"]

    done, seen = poll_video(media, account, video["id"])
    assert "in_progress" in seen
    assert done["status"] == "completed" and done["progress"] == 100 and done["error"] is None
    assert done["completed_at"] >= done["created_at"] and done["expires_at"] > done["completed_at"]
    assert done["helyx"]["credits_charged"] == 2000

    content = media.client.get(f"/api/v1/videos/{video['id']}/content", headers=account.headers)
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    assert content.headers["x-content-type-options"] == "nosniff"  # served from our origin: never sniffed as HTML
    head = media.client.head(f"/api/v1/videos/{video['id']}/content", headers=account.headers)
    assert (head.status_code, head.content, head.headers["content-type"]) == (200, b"", "video/mp4")
    assert head.headers["content-length"] == str(len(content.content))
    width, height, frames, seconds = mp4_facts(content.content)
    assert (width, height) == (1280, 720)
    assert frames == 32 and seconds == pytest.approx(4.0, abs=0.01)
    after = assert_books_balance(media.engine, account.account_id)
    assert before.balance - after.balance == VIDEO_PRICE


def test_a_videos_progress_moves_while_it_renders(make_media: Callable[..., Media]) -> None:
    """The progress reached the job row only with the lease renewal (every quarter of the lease,
    5 s by default): a 4 s video read 0 until it was done. It now moves at most once a second."""
    media = make_media(simulated_job_seconds=3.0, job_lease_seconds=20.0)
    account = media.account("plus")
    video = media.client.post("/api/v1/videos", headers=account.headers, json={"model": "vo3", "prompt": "slow"})
    assert video.status_code == 200, video.text
    seen: list[int] = []
    deadline = time.monotonic() + 20
    while not seen or seen[-1] < 100:
        view = media.client.get(f"/api/v1/videos/{video.json()['id']}", headers=account.headers).json()
        seen.append(view["progress"])
        assert time.monotonic() < deadline, seen
        time.sleep(0.1)
    assert seen == sorted(seen) and any(0 < p < 100 for p in seen), seen


def test_a_result_past_its_expiry_is_gone_everywhere_before_the_sweeper_deletes_it(media: Media) -> None:
    """The file link refused an expired result, while /videos/{id}/content still streamed it and
    the job still listed it with fresh links, until the sweeper's file pass came by."""
    account = media.account("plus")
    created = media.client.post("/api/v1/videos", headers=account.headers, json={"model": "vo3", "prompt": "boat"})
    video, _ = poll_video(media, account, created.json()["id"])
    link = media.client.get(f"/api/v1/jobs/{video['id']}", headers=account.headers).json()["result"]["files"][0]["url"]
    with clock.frozen(clock.now() + timedelta(days=media.settings.results_ttl_days, seconds=5)):
        assert error_of(media.client.get(link, headers=account.headers), 404)["code"] == "file_not_found"
        content = media.client.get(f"/api/v1/videos/{video['id']}/content", headers=account.headers)
        assert error_of(content, 404)["code"] == "video_not_found"
        assert error_of(media.client.get(f"/api/v1/videos/{video['id']}", headers=account.headers), 404)
        assert video["id"] not in [v["id"] for v in media.client.get("/api/v1/videos",
                                                                     headers=account.headers).json()["data"]]
        job = media.client.get(f"/api/v1/jobs/{video['id']}", headers=account.headers).json()
        assert job["status"] == "succeeded" and job["result"]["files"] == [], job
    assert media.jobs.stored_keys(), "the bytes are still on disk: only the sweeper deletes them"


def test_a_video_created_as_multipart_form_data_like_the_sdk_sends_it(media: Media) -> None:
    account = media.account("plus")
    form = [("prompt", (None, "a tall ship")), ("model", (None, "vo3")), ("seconds", (None, "4")),
            ("size", (None, "720x1280"))]
    response = media.client.post("/api/v1/videos", headers=account.headers, files=form)

    assert response.request.headers["content-type"].startswith("multipart/form-data")
    assert response.status_code == 200, response.text
    assert response.json()["size"] == "720x1280" and response.json()["seconds"] == "4"
    done, _ = poll_video(media, account, response.json()["id"])
    assert done["status"] == "completed"
    content = media.client.get(f"/api/v1/videos/{done['id']}/content", headers=account.headers)
    assert mp4_facts(content.content)[:3] == (720, 1280, 32)


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


def test_null_for_an_optional_video_field_is_its_default_and_a_required_one_is_still_refused(
        media: Media) -> None:
    account = media.account("plus")
    response = media.client.post("/api/v1/videos", headers=account.headers,
                                 json={"model": "vo3", "prompt": "a paper boat", "seconds": None, "size": None})
    assert response.status_code == 200, response.text
    assert response.json()["seconds"] == "4" and response.json()["size"] == "720x1280"

    before = media.counts(account)
    refused = media.client.post("/api/v1/videos", headers=account.headers, json={"model": "vo3", "prompt": None})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt", refused.text
    assert media.counts(account) == before


def test_a_canceled_video_shows_as_failed_with_error_code_canceled_and_is_refunded(
        make_media: Callable[..., Media]) -> None:
    media = make_media(simulated_job_seconds=5.0)
    account = media.account("plus")
    before = books(media.engine, account.account_id)
    video = media.client.post("/api/v1/videos", headers=account.headers,
                              json={"model": "vo3", "prompt": "never mind"}).json()

    canceled = media.client.post(f"/api/v1/jobs/{video['id']}/cancel", headers=account.headers)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    view, _ = poll_video(media, account, video["id"])
    assert view["status"] == "failed" and view["error"]["code"] == "canceled"
    listed = media.client.get("/api/v1/videos", headers=account.headers).json()
    assert [v["status"] for v in listed["data"]] == ["failed"]
    error_of(media.client.get(f"/api/v1/videos/{video['id']}/content", headers=account.headers), 404)
    after = assert_books_balance(media.engine, account.account_id)
    assert after.balance == before.balance and after.available == before.available


def test_delete_removes_a_finished_videos_content_and_cancels_an_unfinished_one_with_a_refund(
        make_media: Callable[..., Media]) -> None:
    media = make_media(simulated_job_seconds=0.2)
    account = media.account("plus")
    video = media.client.post("/api/v1/videos", headers=account.headers, json={"prompt": "keep"}).json()
    done, _ = poll_video(media, account, video["id"])
    assert done["status"] == "completed"
    assert media.jobs.stored_keys()

    deleted = media.client.delete(f"/api/v1/videos/{video['id']}", headers=account.headers)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": video["id"], "object": "video.deleted", "deleted": True}
    gone = error_of(media.client.get(f"/api/v1/videos/{video['id']}/content", headers=account.headers), 404)
    assert gone["code"] == "video_not_found" and "deleted" in gone["message"]
    assert media.jobs.files(video["id"]) == [] and media.jobs.stored_keys() == []
    assert media.jobs.job(video["id"])["charged"] == VIDEO_PRICE  # delivered, so still paid for
    error_of(media.client.get(f"/api/v1/videos/{video['id']}", headers=account.headers), 404)
    error_of(media.client.delete(f"/api/v1/videos/{video['id']}", headers=account.headers), 404)
    listed = media.client.get("/api/v1/videos", headers=account.headers).json()
    assert video["id"] not in [v["id"] for v in listed["data"]]

    before = books(media.engine, account.account_id)
    pending = media.client.post("/api/v1/videos", headers=account.headers, json={"prompt": "drop"}).json()
    assert pending["status"] in ("queued", "in_progress")  # removed before it can finish
    assert media.client.delete(f"/api/v1/videos/{pending['id']}", headers=account.headers).status_code == 200
    row = media.jobs.wait(pending["id"])
    assert row["status"] == "canceled" and row["charged"] == 0
    after = assert_books_balance(media.engine, account.account_id)
    assert after.balance == before.balance


def _video_ids_newest_first(media: Media, account: TestAccount) -> list[str]:
    with media.engine.connect() as conn:
        rows = conn.execute(text("SELECT id FROM jobs WHERE account_id = :a AND type = 'video'"
                                 " ORDER BY created_at DESC, id DESC"), {"a": account.account_id}).all()
    return [r[0] for r in rows]


def _walk_videos(media: Media, account: TestAccount, limit: int, order: str = "desc") -> list[str]:
    """Every page of GET /videos, following `last_id` while `has_more`: the ids in order."""
    seen: list[str] = []
    after: str | None = None
    while True:
        query: dict[str, Any] = {"limit": limit, "order": order, **({"after": after} if after else {})}
        page = media.client.get("/api/v1/videos", headers=account.headers, params=query).json()
        ids = [v["id"] for v in page["data"]]
        assert ids, page  # never an empty page: has_more promised one
        assert page["first_id"] == ids[0] and page["last_id"] == ids[-1], page
        assert len(ids) == limit or not page["has_more"], page
        seen += ids
        if not page["has_more"]:
            return seen
        after = page["last_id"]


def test_after_deletes_video_pages_stay_full_and_the_cursor_walks_every_video_once(
        make_media: Callable[..., Media]) -> None:
    media = make_media(simulated_job_seconds=0.0)
    account = media.account("ultra")
    for i in range(5):
        video = media.client.post("/api/v1/videos", headers=account.headers, json={"prompt": f"clip {i}"}).json()
        media.jobs.wait(video["id"])
    ids = _video_ids_newest_first(media, account)
    for gone in (ids[0], ids[2]):  # the newest (the first page's only item at limit=1) and one inside
        assert media.client.delete(f"/api/v1/videos/{gone}", headers=account.headers).status_code == 200
    kept = [ids[1], ids[3], ids[4]]

    first = media.client.get("/api/v1/videos", headers=account.headers, params={"limit": 1}).json()
    assert [v["id"] for v in first["data"]] == [ids[1]]
    assert first["has_more"] is True and first["first_id"] == first["last_id"] == ids[1]
    three = media.client.get("/api/v1/videos", headers=account.headers, params={"limit": 3}).json()
    assert [v["id"] for v in three["data"]] == kept and three["has_more"] is False
    two = media.client.get("/api/v1/videos", headers=account.headers, params={"limit": 2}).json()
    assert [v["id"] for v in two["data"]] == kept[:2] and two["has_more"] is True
    for limit in (1, 2, 3, 100):
        assert _walk_videos(media, account, limit) == kept, limit
        assert _walk_videos(media, account, limit, order="asc") == kept[::-1], limit
    # a cursor that is itself a deleted video still pages on from where it stood
    after_gone = media.client.get("/api/v1/videos", headers=account.headers,
                                  params={"limit": 1, "after": ids[2]}).json()
    assert [v["id"] for v in after_gone["data"]] == [ids[3]] and after_gone["has_more"] is True
    # GET /jobs still lists all five (a deleted video was delivered and paid for)
    jobs = media.client.get("/api/v1/jobs", headers=account.headers, params={"type": "video"}).json()
    assert [j["id"] for j in jobs["data"]] == ids
    assert [len(j["result"]["files"]) for j in jobs["data"]] == [0, 1, 0, 1, 1]  # the deleted ones: no files
    oldest = media.client.get("/api/v1/jobs", headers=account.headers, params={"order": "asc", "limit": 2}).json()
    assert [j["id"] for j in oldest["data"]] == ids[::-1][:2] and oldest["has_more"] is True
    rest = media.client.get("/api/v1/jobs", headers=account.headers,
                            params={"order": "asc", "after": oldest["last_id"]}).json()
    assert [j["id"] for j in rest["data"]] == ids[::-1][2:] and rest["has_more"] is False


def test_a_deleted_unfinished_or_failed_video_is_404_afterwards_and_refunded_once(
        make_media: Callable[..., Media]) -> None:
    media = make_media(simulated_job_seconds=5.0)
    account = media.account("plus")
    before = books(media.engine, account.account_id)
    pending = media.client.post("/api/v1/videos", headers=account.headers, json={"prompt": "drop"}).json()
    canceled = media.client.post("/api/v1/videos", headers=account.headers, json={"prompt": "then drop"}).json()
    assert media.client.post(f"/api/v1/jobs/{canceled['id']}/cancel", headers=account.headers).status_code == 200

    for video in (pending, canceled):
        deleted = media.client.delete(f"/api/v1/videos/{video['id']}", headers=account.headers)
        assert deleted.json() == {"id": video["id"], "object": "video.deleted", "deleted": True}
        assert error_of(media.client.get(f"/api/v1/videos/{video['id']}", headers=account.headers),
                        404)["code"] == "video_not_found"
        error_of(media.client.delete(f"/api/v1/videos/{video['id']}", headers=account.headers), 404)
        error_of(media.client.get(f"/api/v1/videos/{video['id']}/content", headers=account.headers), 404)
        row = media.jobs.wait(video["id"])
        assert row["status"] == "canceled" and row["charged"] == 0
        assert media.jobs.kinds(video["id"]).count("release") == 1, media.jobs.kinds(video["id"])
        job = media.client.get(f"/api/v1/jobs/{video['id']}", headers=account.headers).json()
        assert job["status"] == "canceled" and job["result"] is None  # it stays in /jobs
    listed = media.client.get("/api/v1/videos", headers=account.headers).json()
    assert listed["data"] == [] and listed["has_more"] is False
    after = assert_books_balance(media.engine, account.account_id)
    assert after.balance == before.balance and after.available == before.available


def test_a_video_that_finishes_while_being_deleted_loses_its_file_and_is_404(
        make_media: Callable[..., Media], monkeypatch: pytest.MonkeyPatch) -> None:
    media = make_media(simulated_job_seconds=0.3)
    account = media.account("plus")
    video = media.client.post("/api/v1/videos", headers=account.headers, json={"prompt": "race"}).json()
    assert video["status"] in ("queued", "in_progress")

    def cancel_too_late(engine: Any, account_id: str, job_id: str) -> None:
        media.jobs.wait(job_id)  # it succeeds between the route's read and its cancel
        lifecycle.cancel(engine, account_id, job_id)  # 409: already finished

    monkeypatch.setattr(videos_route, "cancel", cancel_too_late)
    assert media.client.delete(f"/api/v1/videos/{video['id']}", headers=account.headers).status_code == 200
    assert media.jobs.job(video["id"])["status"] == "succeeded"
    assert media.jobs.files(video["id"]) == [] and media.jobs.stored_keys() == []
    error_of(media.client.get(f"/api/v1/videos/{video['id']}", headers=account.headers), 404)


# --- refusals that leave no trace -----------------------------------------------------------------


def test_vo3_on_the_free_plan_is_403_and_nothing_is_reserved(media: Media) -> None:
    account = media.account("free")
    before, counts = books(media.engine, account.account_id), media.counts(account)
    error = error_of(media.client.post("/api/v1/videos", headers=account.headers,
                                       json={"model": "vo3", "prompt": "a boat"}), 403)
    assert error["type"] == "permission_error" and error["param"] == "model"
    assert books(media.engine, account.account_id) == before and media.counts(account) == counts


BAD_IMAGES = [
    ({"prompt": "x", "n": 5}, "n"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "size": "13x7"}, "size"),
    ({"size": "256x256"}, "prompt"),
    ({"prompt": "x", "response_format": "gif"}, "response_format"),
    ({"prompt": "x", "webhook_url": "ftp://example.com/hook"}, "webhook_url"),
    ({"prompt": "x", "webhook_url": "not a url"}, "webhook_url"),
    ({"prompt": "x", "webhook_url": "http://127.0.0.1:8080/hook"}, "webhook_url"),
    ({"prompt": "x", "webhook_url": "http://169.254.169.254/latest/meta-data/"}, "webhook_url"),
    ({"prompt": "x", "webhook_url": "http://10.0.0.7/hook"}, "webhook_url"),
    ({"prompt": "x", "webhook_url": "http://[::1]/hook"}, "webhook_url"),
    ({"prompt": "x", "webhook_url": "http://localhost/hook"}, "webhook_url"),
    ({"prompt": "x", "webhook_url": "http://metadata.google.internal/computeMetadata/v1/"}, "webhook_url"),
]
BAD_VIDEOS = [
    ({"prompt": "x", "seconds": "5"}, "seconds"),
    ({"prompt": "x", "size": "13x7"}, "size"),
    ({"model": "vo3"}, "prompt"),
    ({"prompt": "x", "webhook_url": "http://192.168.1.1/hook"}, "webhook_url"),
]


def test_bad_input_is_a_400_envelope_and_leaves_no_job_no_hold_and_no_ledger_entry(media: Media) -> None:
    account = media.account("plus")
    before = books(media.engine, account.account_id)
    cases = [(IMAGES, b, p) for b, p in BAD_IMAGES] + [("/api/v1/videos", b, p) for b, p in BAD_VIDEOS]
    for path, body, param in cases:
        response = media.client.post(path, headers=account.headers, json=body)

        error = error_of(response, 400)
        assert error["type"] == "invalid_request_error" and error["param"] == param, (body, error)
        assert response.headers["x-should-retry"] == "false", body
        assert media.counts(account) == (0, 0, 1), body  # only the opening allowance's entry
        assert books(media.engine, account.account_id) == before, body


def test_bad_multipart_input_is_a_400_too(media: Media) -> None:
    account = media.account("plus")
    response = media.client.post("/api/v1/videos", headers=account.headers,
                                 files=[("prompt", (None, "x")), ("seconds", (None, "5"))])
    assert error_of(response, 400)["param"] == "seconds"
    assert media.counts(account) == (0, 0, 1)


def test_what_the_gateway_cannot_honour_is_refused_by_name_and_costs_nothing(media: Media) -> None:
    """An image stream would arrive empty in the SDK (it waits for events) and a reference image
    would be dropped: either way the caller would pay for something other than what they asked."""
    account = media.account("plus")
    before = media.counts(account)
    refusals = [
        (IMAGES, {"json": {"prompt": "x", "stream": True}}, "stream"),
        (IMAGES, {"json": {"prompt": "x", "partial_images": 2}}, "partial_images"),
        (IMAGES, {"json": {"prompt": "x", "output_format": "jpeg"}}, "output_format"),
        ("/api/v1/videos", {"json": {"model": "vo3", "prompt": "x", "input_reference": {"image_url": "https://a"}}},
         "input_reference"),
        ("/api/v1/videos", {"files": [("prompt", (None, "x")), ("model", (None, "vo3")),
                                      ("input_reference", ("r.png", PNG_BYTES, "image/png"))]}, "input_reference"),
        ("/api/v1/videos", {"files": [("prompt", ("p.txt", b"a prompt", "text/plain"))]}, "prompt"),
    ]
    for path, body, param in refusals:
        response = media.client.post(path, headers=account.headers, **body)
        error = error_of(response, 400)
        assert error["param"] == param, (param, error)
    assert "not supported" in error_of(media.client.post(IMAGES, headers=account.headers, json={
        "prompt": "x", "stream": True}), 400)["message"]
    assert media.counts(account) == before

    fine = media.client.post(IMAGES, headers=account.headers, json={
        "prompt": "x", "size": "256x256", "stream": False, "partial_images": 0, "output_format": "png"})
    assert fine.status_code == 200, fine.text


# --- Idempotency-Key ------------------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_is_the_same_job_charged_once(media: Media) -> None:
    account = media.account()
    headers = {**account.headers, **ASYNC, "Idempotency-Key": "order-42"}
    body = {"prompt": "a single kite", "size": "256x256"}
    first = media.client.post(IMAGES, headers=headers, json=body)
    second = media.client.post(IMAGES, headers=headers, json=body)

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    poll_job(media, account, first.json()["id"])
    third = media.client.post(IMAGES, headers=headers, json=body)  # after it finished, too
    assert third.json()["id"] == first.json()["id"] and third.json()["status"] == "succeeded"
    assert media.counts(account)[:2] == (1, 1)
    after = assert_books_balance(media.engine, account.account_id)
    assert after.balance == 800_000_000

    other = media.client.post(IMAGES, headers=headers, json={**body, "prompt": "two kites"})
    error = error_of(other, 409)
    assert error["type"] == "conflict_error" and other.headers["x-should-retry"] == "false"
    assert media.counts(account)[:2] == (1, 1)
    assert books(media.engine, account.account_id) == after


def test_twenty_concurrent_duplicates_make_one_job(media: Media, monkeypatch: pytest.MonkeyPatch) -> None:
    account = media.account()
    headers = {**account.headers, **ASYNC, "Idempotency-Key": "burst-1"}
    body = {"prompt": "a burst", "size": "256x256"}
    # Force the race: every request passes the "key not used yet" check before any of them inserts,
    # so 19 of them must lose on the unique constraint and answer with the winner's job.
    barrier = threading.Barrier(20, timeout=10)
    first_look = submit._replay
    waited: set[int] = set()

    def replay_then_wait(*args: Any) -> Any:
        found = first_look(*args)
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            barrier.wait()
        return found

    monkeypatch.setattr(submit, "_replay", replay_then_wait)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: media.client.post(IMAGES, headers=headers, json=body), range(20)))

    assert [r.status_code for r in responses] == [202] * 20, [r.text for r in responses if r.status_code != 202]
    assert len({r.json()["id"] for r in responses}) == 1
    assert media.counts(account)[:2] == (1, 1)
    poll_job(media, account, responses[0].json()["id"])
    after = assert_books_balance(media.engine, account.account_id)
    assert after.balance == 800_000_000


def test_usage_shows_what_each_settlement_paid_for(media: Media) -> None:
    """SPEC §4: GET /usage lists the ledger *and usage* rows: a settlement names its chat call's
    tokens or its media job; the other entries carry none."""
    account = media.account()
    chat = media.client.post("/api/v1/chat/completions", headers=account.headers, json={
        "model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}).json()
    image = media.client.post(IMAGES, headers=account.headers, json={"prompt": "a kite", "size": "256x256"}).json()

    entries = media.client.get("/api/v1/usage", headers=account.headers).json()["data"]
    settled = {e["usage"].get("generation_id") or e["usage"].get("job_id"): e for e in entries if e["usage"]}
    assert set(settled) == {chat["id"], image["helyx"]["job_id"]}
    tokens = chat["usage"]
    assert settled[chat["id"]]["usage"] == {
        "generation_id": chat["id"], "model": "gpt-4o", "status": "succeeded",
        "prompt_tokens": tokens["prompt_tokens"], "completion_tokens": tokens["completion_tokens"],
        "total_tokens": tokens["total_tokens"]}
    assert settled[chat["id"]]["credits"] == -chat["helyx"]["credits_charged"]
    assert settled[image["helyx"]["job_id"]]["usage"] == {
        "job_id": image["helyx"]["job_id"], "type": "image", "model": "nano-banana-pro", "status": "succeeded"}
    assert settled[image["helyx"]["job_id"]]["credits"] == -200
    assert all(e["usage"] is None for e in entries if e["kind"] not in ("settle", "release", "expire"))


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


def test_a_submissions_request_line_names_its_model_job_and_reservation(media: Media,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    account = media.account()
    caplog.set_level(logging.INFO, logger="helyx.request")
    made = media.client.post(IMAGES, headers=account.headers, json={"prompt": "logged", "size": "256x256", "n": 2})
    assert made.status_code == 200, made.text
    lines = [r for r in caplog.records if getattr(r, "route", None) == "/api/v1/images/generations"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.model, line.job_id, line.credits_reserved) == (  # type: ignore[attr-defined]
        "nano-banana-pro", made.json()["helyx"]["job_id"], 400)
