"""Jobs and their files over HTTP: respond-async, ownership, signed links and their refusals, cancel,
expiry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from common import clock
from common.jobs import lifecycle
from common.signing import sign_file_url
from common.storage import LocalStorage
from tests.api.chat.helpers import assert_books_balance
from tests.api.media.conftest import Media
from tests.api.media.helpers import (
    ASYNC,
    IMAGES,
    error_of,
    png,
    poll_job,
    poll_video,
)


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
    assert listed["data"][0]["helyx"] == done["helyx"]  # as GET /jobs/{id} shows it
    assert done["helyx"]["credits_remaining"] == 800
    assert_books_balance(media.engine, account.account_id)


def test_respond_async_counts_in_any_of_several_prefer_headers(make_media: Callable[..., Media]) -> None:
    media = make_media(simulated_job_seconds=0.5)
    account = media.account()
    headers = [*account.headers.items(), ("Prefer", "wait=1"), ("Prefer", "respond-async")]
    response = media.client.post(IMAGES, headers=headers, json={"prompt": "two headers", "size": "256x256"})
    assert response.status_code == 202, response.text  # it waited for the job, reading the first one only


@pytest.mark.parametrize(("prefer", "async_"), [
    ("wait=5, respond-async", True), ("RESPOND-ASYNC; x=1", True), ("respond-async=1", True),
    ("no-respond-async", False), ("respond-asyncx", False), ("return=minimal", False),
])
def test_respond_async_is_a_preference_named_exactly_so(make_media: Callable[..., Media], prefer: str,
                                                         async_: bool) -> None:
    """It was found as a substring of the headers: `respond-asyncx` answered 202 (a media review)."""
    media = make_media(simulated_job_seconds=0.2)
    account = media.account()
    response = media.client.post(IMAGES, headers={**account.headers, "Prefer": prefer},
                                 json={"prompt": "prefer", "size": "256x256"})
    assert response.status_code == (202 if async_ else 200), response.text


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


@pytest.mark.parametrize("expires", ["%C2%B2", "9" * 5_000, "%EF%BC%91", "-1", ""])
def test_an_expires_value_that_is_no_timestamp_is_an_invalid_signature(media: Media, expires: str) -> None:
    """`²` (or a fullwidth digit) passed `isdigit()` and then failed `int()`, and so did 5,000 digits:
    an anonymous request was a 500 with a traceback in the log (a security review)."""
    path = f"/api/v1/files/file_000000000000000000000000/content?expires={expires}&signature=x"
    assert error_of(media.client.get(path), 401)["code"] == "invalid_signature"


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


def test_a_repeated_cancel_sends_the_jobs_webhook_once(make_media: Callable[..., Media]) -> None:
    """Each cancel of a canceled job queued one more delivery chain: one free account could flood
    the workers (which the media jobs share) and a receiver with copies (found by a security review)."""
    media = make_media(simulated_job_seconds=5)
    account = media.account()
    services = media.client.app.state.services  # type: ignore[attr-defined]
    sent: list[str] = []
    services.extras["notify"] = sent.append
    job = media.client.post(IMAGES, headers={**account.headers, **ASYNC},
                            json={"prompt": "undo", "size": "256x256",
                                  "webhook_url": "https://hooks.example.com/helyx"})
    assert job.status_code == 202, job.text
    for _ in range(5):
        again = media.client.post(f"/api/v1/jobs/{job.json()['id']}/cancel", headers=account.headers)
        assert again.status_code == 200 and again.json()["status"] == "canceled"
    assert sent == [job.json()["id"]]
    media.jobs.join()
    assert media.jobs.kinds(job.json()["id"]) == ["reserve", "release"]


def test_deleting_an_unfinished_video_sends_its_webhook_at_once_and_once(make_media: Callable[..., Media]) -> None:
    """As a cancel does: it was left to the sweeper, a minute later."""
    media = make_media(simulated_job_seconds=5)
    account = media.account("pro")
    services = media.client.app.state.services  # type: ignore[attr-defined]
    sent: list[str] = []
    services.extras["notify"] = sent.append
    video = media.client.post("/api/v1/videos", headers=account.headers,
                              json={"model": "vo3", "prompt": "undo", "webhook_url": "https://hooks.example.com/helyx"})
    assert video.status_code == 200, video.text
    deleted = media.client.delete(f"/api/v1/videos/{video.json()['id']}", headers=account.headers)
    assert deleted.status_code == 200, deleted.text
    assert sent == [video.json()["id"]]
    media.jobs.join()
    assert media.jobs.kinds(video.json()["id"]) == ["reserve", "release"]


@pytest.mark.parametrize("route", ["/api/v1/jobs/{id}/cancel", "/api/v1/videos/{id}"])
def test_a_cancel_removes_files_an_earlier_attempt_stored_and_never_recorded(
        make_media: Callable[..., Media], route: str) -> None:
    """An attempt cut off between storing its file and recording it (a killed worker, a
    shutdown's grace), then a cancel: no row names the file, so the expiry sweep never found it
    and it stayed on disk for good. The cancel removes it; other jobs' files stay."""
    media = make_media()
    account = media.account("plus")
    job_type = "video" if "videos" in route else "image"
    kept = media.jobs.submit(account, job_type=job_type)
    media.jobs.join()
    assert media.jobs.job(kept)["status"] == "succeeded"
    stored_before = media.jobs.stored_keys()
    assert len(stored_before) == 1
    job_id = media.jobs.submit(account, job_type=job_type, enqueue=False)
    assert lifecycle.claim(media.engine, job_id, "cut-worker", 600, None) is not None
    orphan = f"{account.account_id}/{job_id}/file_cut.bin"
    LocalStorage(media.settings.storage_dir).put(orphan, b"half done", "application/octet-stream")
    assert lifecycle.give_back(media.engine, job_id, "cut-worker")  # the shutdown put it back in the queue

    method = media.client.delete if "videos" in route else media.client.post
    response = method(route.format(id=job_id), headers=account.headers)

    assert response.status_code == 200, response.text
    assert media.jobs.job(job_id)["status"] == "canceled"
    assert media.jobs.stored_keys() == stored_before
    assert media.jobs.kinds(job_id) == ["reserve", "release"]
    assert_books_balance(media.engine, account.account_id)
