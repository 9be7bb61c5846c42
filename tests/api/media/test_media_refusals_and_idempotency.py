"""Media requests that must leave no trace (plan gates, bad input, what cannot be honoured), the
Idempotency-Key, and what usage and the request log say about a submission."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from common import clock
from common.jobs import submit
from tests.api.chat.helpers import assert_books_balance, books
from tests.api.media.conftest import Media
from tests.api.media.helpers import (
    ASYNC,
    IMAGES,
    PNG_BYTES,
    error_of,
    poll_job,
)

BAD_IMAGES = [
    ({"prompt": "x", "n": 5}, "n"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "size": "13x7"}, "size"),
    ({"size": "256x256"}, "prompt"),
    ({"prompt": " \n\t ", "size": "256x256"}, "prompt"),
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
    ({"model": "vo3", "prompt": "   "}, "prompt"),
    ({"prompt": "x", "webhook_url": "http://192.168.1.1/hook"}, "webhook_url"),
]



def test_vo3_on_the_free_plan_is_403_and_nothing_is_reserved(media: Media) -> None:
    account = media.account("free")
    before, counts = books(media.engine, account.account_id), media.counts(account)
    error = error_of(media.client.post("/api/v1/videos", headers=account.headers,
                                       json={"model": "vo3", "prompt": "a boat"}), 403)
    assert error["type"] == "permission_error" and error["param"] == "model"
    assert books(media.engine, account.account_id) == before and media.counts(account) == counts


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
        (IMAGES, {"json": {"prompt": "x", "background": "transparent"}}, "background"),  # opaque images only
        (IMAGES, {"json": {"prompt": "x", "quality": "bogus"}}, "quality"),  # taken, and charged, before
        (IMAGES, {"json": {"prompt": "x", "style": "bogus"}}, "style"),
        (IMAGES, {"json": {"prompt": "x", "background": "weird"}}, "background"),
        (IMAGES, {"json": {"prompt": "x", "moderation": "bogus"}}, "moderation"),
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
        "prompt": "x", "size": "256x256", "stream": False, "partial_images": 0, "output_format": "png",
        "quality": "hd", "style": "vivid", "background": "opaque", "moderation": "low"})
    assert fine.status_code == 200, fine.text


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


def test_an_idempotency_key_is_the_accounts_own(media: Media) -> None:
    """Another account's use of the same key neither replays its job nor refuses this one."""
    first, second = media.account(), media.account()
    body = {"prompt": "a shared kite", "size": "256x256"}
    made = [media.client.post(IMAGES, headers={**who.headers, **ASYNC, "Idempotency-Key": "shared"}, json=body)
            for who in (first, second)]
    assert [r.status_code for r in made] == [202, 202], [r.text for r in made]
    assert made[0].json()["id"] != made[1].json()["id"]
    assert media.counts(first)[:2] == (1, 1) and media.counts(second)[:2] == (1, 1)
    for who, response in zip((first, second), made, strict=True):
        assert poll_job(media, who, response.json()["id"])["helyx"]["credits_charged"] == 200


def test_an_idempotency_key_is_released_after_24_hours(media: Media) -> None:
    """SPEC §4: the same job within 24 h; past them the key makes a new job, charged anew."""
    account = media.account()
    headers = {**account.headers, **ASYNC, "Idempotency-Key": "daily"}
    body = {"prompt": "a daily kite", "size": "256x256"}
    with clock.frozen(clock.now()) as advance:
        first = media.client.post(IMAGES, headers=headers, json=body).json()["id"]
        poll_job(media, account, first)
        advance(timedelta(hours=23, minutes=59))
        assert media.client.post(IMAGES, headers=headers, json=body).json()["id"] == first
        advance(timedelta(minutes=1, seconds=1))
        again = media.client.post(IMAGES, headers=headers, json=body)
        assert again.status_code == 202 and again.json()["id"] != first, again.text
        assert poll_job(media, account, again.json()["id"])["helyx"]["credits_charged"] == 200
    assert media.counts(account)[:2] == (2, 2)  # (a day passed: the allowance was reset meanwhile)
    assert_books_balance(media.engine, account.account_id)


def test_the_same_idempotency_key_with_another_webhook_url_is_409(make_media: Callable[..., Media]) -> None:
    """The webhook is part of the body: a retry that moved it would be told of the old job only."""
    # (a receiver that refuses at once, tried once: no delivery is left retrying when the test ends)
    media = make_media(webhook_allow_private=True, webhook_max_attempts=1)
    account = media.account()
    headers = {**account.headers, **ASYNC, "Idempotency-Key": "hooked"}
    body = {"prompt": "a hooked kite", "size": "256x256"}
    first = media.client.post(IMAGES, headers=headers, json={**body, "webhook_url": "http://127.0.0.1:9/a"})
    assert first.status_code == 202, first.text
    poll_job(media, account, first.json()["id"])
    media.jobs.join()
    before = books(media.engine, account.account_id)
    moved = media.client.post(IMAGES, headers=headers, json={**body, "webhook_url": "http://127.0.0.1:9/b"})
    assert error_of(moved, 409)["type"] == "conflict_error"
    assert media.counts(account)[:2] == (1, 1) and books(media.engine, account.account_id) == before


def test_replaying_the_key_of_a_deleted_video_is_a_404_as_its_retrieve_is(media: Media) -> None:
    """It answered the deleted video as completed, whose content was then a 404."""
    account = media.account("pro")
    headers = {**account.headers, "Idempotency-Key": "clip-7"}
    body = {"model": "vo3", "prompt": "waves"}
    video = media.client.post("/api/v1/videos", headers=headers, json=body).json()
    poll_job(media, account, video["id"])
    assert media.client.delete(f"/api/v1/videos/{video['id']}", headers=account.headers).status_code == 200
    before = books(media.engine, account.account_id)

    replay = media.client.post("/api/v1/videos", headers=headers, json=body)
    assert error_of(replay, 404)["code"] == "video_not_found"
    assert error_of(media.client.get(f"/api/v1/videos/{video['id']}", headers=account.headers), 404)
    assert books(media.engine, account.account_id) == before and media.counts(account)[0] == 1  # no new job


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
