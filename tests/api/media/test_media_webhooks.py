"""Webhooks from the media routes without HELYX_PUBLIC_URL: the delivered job's file URLs are
absolute, on the host the job was submitted to, and open without a key; the base URL kept for
that never shows in the job and never counts as part of the body for Idempotency-Key."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.api.media.conftest import Media
from tests.fakes.server import serve

IMAGES = "/api/v1/images/generations"


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    async def hook(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self.lock:
            self.bodies.append(body)
        return Response(status_code=204)

    def wait(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.bodies) >= count:
                    return list(self.bodies)
            assert time.monotonic() < deadline, f"{len(self.bodies)} of {count} deliveries"
            time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    recorder = Receiver()
    with serve(Starlette(routes=[Route("/hook", recorder.hook, methods=["POST"])])) as url:
        yield recorder, url + "/hook"


def test_a_webhooks_file_urls_are_absolute_on_the_submitting_host_and_open_without_a_key(
        make_media: Callable[..., Media], receiver: tuple[Receiver, str]) -> None:
    recorder, hook = receiver
    media = make_media(webhook_allow_private=True, webhook_backoff_seconds=0.05, public_url=None)
    account = media.account()
    body = {"prompt": "ring the bell", "size": "256x256", "webhook_url": hook}
    headers = {**account.headers, "Prefer": "respond-async", "Idempotency-Key": "bell-1"}
    job = media.client.post(IMAGES, headers=headers, json=body).json()
    assert "_base_url" not in job["params"] and not any(k.startswith("_") for k in job["params"])

    [delivered] = recorder.wait(1)
    assert delivered["type"] == "job.succeeded" and delivered["data"]["id"] == job["id"]
    assert not any(k.startswith("_") for k in delivered["data"]["params"])
    [file] = delivered["data"]["result"]["files"]
    assert file["url"].startswith("http://testserver/api/v1/files/file_"), file["url"]
    opened = media.client.get(file["url"])  # no Authorization header
    assert opened.status_code == 200 and opened.headers["content-type"] == "image/png"
    shown = media.client.get(f"/api/v1/jobs/{job['id']}", headers=account.headers).json()
    assert shown["params"] == job["params"]

    # the same key and body sent to another host name is the same request: the same job, not a 409
    again = media.client.post(IMAGES, headers={**headers, "host": "gateway.example:8443"}, json=body)
    assert again.status_code == 202 and again.json()["id"] == job["id"], again.text
