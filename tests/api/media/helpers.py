"""What the media route tests share: constants and pollers for jobs and videos, the error envelope's check."""

from __future__ import annotations

import io
import time
from typing import Any

import av
from PIL import Image

from common.providers import simulated_media
from tests.api.media.conftest import Media
from tests.conftest import TestAccount

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
