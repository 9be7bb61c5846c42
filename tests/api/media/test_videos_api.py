"""The OpenAI Videos API over HTTP: create (JSON and multipart), poll, progress, content, cancel,
delete and the list's cursor."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from common import clock
from common.jobs import lifecycle
from tests.api.chat.helpers import assert_books_balance, books
from tests.api.media.conftest import Media
from tests.api.media.helpers import (
    error_of,
    mp4_facts,
    poll_video,
)
from tests.conftest import TestAccount
from tests.workers.helpers import VIDEO_PRICE


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
    assert (video["helyx"]["credits_reserved"], video["helyx"]["credits_charged"]) == (2000, 0)  # as /jobs/{id}

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
    for variant in ("thumbnail", "spritesheet"):  # the SDK's download_content(variant=...): not stored
        error = error_of(media.client.get(f"/api/v1/videos/{video['id']}/content", params={"variant": variant},
                                          headers=account.headers), 404)
        assert (error["code"], error["param"]) == ("variant_not_available", "variant"), error
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
    assert listed["data"][0]["helyx"] == view["helyx"] and "credits_remaining" in view["helyx"]  # as a retrieve
    error = error_of(media.client.get(f"/api/v1/videos/{video['id']}/content", headers=account.headers), 404)
    # never "not ready yet": a canceled video will never have content, so waiting for it is pointless
    assert error["code"] == "video_failed" and "was canceled" in error["message"] and "yet" not in error["message"]
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

    real_cancel = lifecycle.cancel

    def cancel_too_late(engine: Any, account_id: str, job_id: str) -> bool:
        media.jobs.wait(job_id)  # it succeeds between the route's read and its cancel
        return real_cancel(engine, account_id, job_id)  # 409: already finished

    monkeypatch.setattr(lifecycle, "cancel", cancel_too_late)
    assert media.client.delete(f"/api/v1/videos/{video['id']}", headers=account.headers).status_code == 200
    assert media.jobs.job(video["id"])["status"] == "succeeded"
    assert media.jobs.files(video["id"]) == [] and media.jobs.stored_keys() == []
    error_of(media.client.get(f"/api/v1/videos/{video['id']}", headers=account.headers), 404)


def test_the_poll_interval_is_half_the_videos_age_from_200_ms_to_2_s(make_media: Callable[..., Media]) -> None:
    """The SDK's poller waits `openai-poll-after-ms`: a fixed 2 s made a 0.3 s simulated video take 2 s
    (found by an SDK review); a video of minutes is still polled every 2 s."""
    media = make_media(simulated_job_seconds=1)  # a tenth of it (100 ms) is under the floor: by its age
    account = media.account("plus")
    created = media.client.post("/api/v1/videos", headers=account.headers, json={"model": "vo3", "prompt": "p"})
    video_id = created.json()["id"]
    assert int(created.headers["openai-poll-after-ms"]) == 200

    def poll_after(age: float) -> int:
        with clock.frozen(clock.now()):  # the age the route sees is exactly `age`, however slow the GET
            with media.engine.begin() as conn:
                conn.execute(text("UPDATE jobs SET created_at = :t WHERE id = :id"),
                             {"t": clock.now().timestamp() - age, "id": video_id})
            response = media.client.get(f"/api/v1/videos/{video_id}", headers=account.headers)
        return int(response.headers["openai-poll-after-ms"])

    assert 999 <= poll_after(2.0) <= 1000  # (the float subtraction may lose a hair of the 2 s)
    assert poll_after(30.0) == 2000
    media.client.post(f"/api/v1/jobs/{video_id}/cancel", headers=account.headers)


def test_a_video_known_to_take_long_says_2_s_from_its_first_answer(make_media: Callable[..., Media]) -> None:
    """The SDK reads the header of its first retrieve only, right after the create: by the age alone
    that said 200 ms, and the SDK retrieved a video of minutes five times a second to its end (found
    by a media review). A tenth of the model's usual time counts from the start."""
    media = make_media(simulated_job_seconds=60)
    account = media.account("plus")
    created = media.client.post("/api/v1/videos", headers=account.headers, json={"model": "vo3", "prompt": "p"})
    video_id = created.json()["id"]
    retrieved = media.client.get(f"/api/v1/videos/{video_id}", headers=account.headers)
    assert created.headers["openai-poll-after-ms"] == retrieved.headers["openai-poll-after-ms"] == "2000"
    media.client.post(f"/api/v1/jobs/{video_id}/cancel", headers=account.headers)


def test_the_content_of_an_unfinished_video_is_404_not_ready_in_the_videos_apis_words(
        make_media: Callable[..., Media]) -> None:
    media = make_media(simulated_job_seconds=5)
    account = media.account("plus")
    video = media.client.post("/api/v1/videos", headers=account.headers, json={"prompt": "slow"}).json()
    media.jobs.wait(video["id"], ("running",))
    error = error_of(media.client.get(f"/api/v1/videos/{video['id']}/content", headers=account.headers), 404)
    assert error["code"] == "video_not_ready" and "(status in_progress)" in error["message"], error
    media.client.post(f"/api/v1/jobs/{video['id']}/cancel", headers=account.headers)
