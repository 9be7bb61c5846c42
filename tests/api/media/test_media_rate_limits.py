"""SPEC §2 on the media submission routes: every answer that the rate limiter counted carries
`x-ratelimit-*`, whatever its status, as chat's do (tests/api/chat/test_rate_limits.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.api.media.conftest import Media

IMAGES = "/api/v1/images/generations"
IMAGE = {"prompt": "a red kite", "size": "256x256"}


def _assert_counted(answers: list[httpx.Response], limit: int, first_remaining: int) -> None:
    for left, response in zip(range(first_remaining, -1, -1), answers, strict=False):
        assert response.headers["x-ratelimit-limit-requests"] == str(limit), response.text
        assert response.headers["x-ratelimit-remaining-requests"] == str(left), response.text
        assert response.headers["x-ratelimit-reset-requests"].endswith("s"), response.text


def test_every_answer_the_limiter_counted_carries_the_rate_limit_headers(make_media: Callable[..., Media]) -> None:
    media = make_media(rate_limit_free=10, rate_limit_plus=10, image_wait_seconds=5.0)
    free, plus = media.account("free"), media.account("plus")
    post: Callable[..., httpx.Response] = media.client.post
    idem = {**free.headers, "Idempotency-Key": "same-key", "Prefer": "respond-async"}
    free_answers = [
        post(IMAGES, headers=free.headers, json=IMAGE),  # waits: 200
        post(IMAGES, headers=idem, json=IMAGE),  # 202 at once
        post(IMAGES, headers=idem, json={**IMAGE, "prompt": "another"}),  # the key reused: 409
        post(IMAGES, headers=free.headers, json={**IMAGE, "model": "no-such-model"}),  # 404
        post("/api/v1/videos", headers=free.headers, json={"model": "vo3", "prompt": "a boat"}),  # plan gate: 403
        post(IMAGES, headers=free.headers, json={**IMAGE, "n": 4}),  # 800 credits, 600 left: 402
    ]
    assert [r.status_code for r in free_answers] == [200, 202, 409, 404, 403, 402], [r.text for r in free_answers]
    assert free_answers[-1].json()["error"]["param"] == "n"  # fewer images may be affordable: the field to lower
    _assert_counted(free_answers, 10, 9)

    plus_answers = [post("/api/v1/videos", headers=plus.headers, json={"model": "vo3", "prompt": "a boat"}),
                    post("/api/v1/videos", headers=plus.headers,
                         files=[("prompt", (None, "a boat")), ("model", (None, "vo3"))])]
    assert [r.status_code for r in plus_answers] == [200, 200], [r.text for r in plus_answers]
    _assert_counted(plus_answers, 10, 9)


def test_a_failed_image_job_and_a_429_carry_them_too_and_a_malformed_body_is_not_counted(
        make_media: Callable[..., Media], monkeypatch: Any) -> None:
    from common.errors import UpstreamError
    from common.providers import simulated_media

    class Broken:
        async def generate_images(self, request: Any) -> Any:
            raise UpstreamError("the provider is down", retryable=False, upstream_status=400)

    monkeypatch.setattr(simulated_media, "SimulatedImageProvider", lambda delay: Broken())
    media = make_media(rate_limit_free=2)
    account = media.account("free")
    malformed = media.client.post(IMAGES, headers=account.headers, json={"prompt": "x", "n": 9})
    assert malformed.status_code == 400 and "x-ratelimit-remaining-requests" not in malformed.headers
    failed = media.client.post(IMAGES, headers=account.headers, json=IMAGE)
    assert failed.status_code == 502, failed.text
    media.client.post(IMAGES, headers=account.headers, json=IMAGE)
    refused = media.client.post(IMAGES, headers=account.headers, json=IMAGE)
    assert refused.status_code == 429 and refused.headers["x-ratelimit-remaining-requests"] == "0"
    _assert_counted([failed], 2, 1)


def test_a_bad_webhook_url_or_idempotency_key_is_refused_before_it_is_counted(
        make_media: Callable[..., Media]) -> None:
    """A fuzz review: these 400s used a rate-limit slot (the checks ran inside the counted block),
    so a client looping on a misconfigured webhook locked itself out, unlike any other 400 about
    its request. Nothing is held or made either."""
    media = make_media(rate_limit_free=3)
    account = media.account("free")
    before = media.counts(account)
    refusals = [
        media.client.post(IMAGES, headers=account.headers, json={**IMAGE, "webhook_url": "http://127.0.0.1/"}),
        media.client.post(IMAGES, headers=account.headers, json={**IMAGE, "webhook_url": "https://a..com/hook"}),
        media.client.post(IMAGES, headers={**account.headers, "Idempotency-Key": "k" * 256}, json=IMAGE),
        media.client.post("/api/v1/videos", headers=account.headers,
                          json={"model": "vo3", "prompt": "a boat", "webhook_url": "http://10.0.0.1/"}),
        media.client.post("/api/v1/videos", headers={**account.headers, "Idempotency-Key": ""},
                          json={"model": "vo3", "prompt": "a boat"}),
    ]
    assert [r.status_code for r in refusals] == [400] * 5, [r.text for r in refusals]
    assert [r.json()["error"]["param"] for r in refusals] == ["webhook_url", "webhook_url", "Idempotency-Key",
                                                            "webhook_url", "Idempotency-Key"]
    assert not any("x-ratelimit-remaining-requests" in r.headers for r in refusals)
    assert media.counts(account) == before  # no job, hold or ledger entry
    counted = media.client.post(IMAGES, headers=account.headers, json=IMAGE)
    assert counted.status_code == 200 and counted.headers["x-ratelimit-remaining-requests"] == "2", counted.text


def test_a_webhook_host_is_looked_up_only_once_the_request_is_counted(make_media: Callable[..., Media],
                                                                      monkeypatch: Any) -> None:
    """A diff review: with the lookup before the count, a key over its rate limit could have any
    name looked up, as often as it liked, and learn from the 400 which ones resolve inside the
    operator's network (the message named the address). Now the lookup comes after the count,
    and the message names no address."""
    import socket

    lookups: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        lookups.append(host)
        address = "10.9.8.7" if host.startswith("internal") else "93.184.215.14"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    media = make_media(rate_limit_free=1)
    account = media.account("free")
    private = media.client.post(IMAGES, headers=account.headers,
                                json={**IMAGE, "webhook_url": "https://internal.probe.test/hook"})
    assert private.status_code == 400 and private.json()["error"]["param"] == "webhook_url", private.text
    assert "10.9.8.7" not in private.text and private.headers["x-ratelimit-remaining-requests"] == "0"
    over = media.client.post(IMAGES, headers=account.headers,
                             json={**IMAGE, "webhook_url": "https://internal-two.probe.test/hook"})
    assert over.status_code == 429, over.text
    assert lookups == ["internal.probe.test"]
