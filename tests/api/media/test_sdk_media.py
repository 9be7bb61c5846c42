"""The official OpenAI SDK against the self-contained shape served by uvicorn on 127.0.0.1 (SQLite,
simulated providers, the in-process StubBroker consumed by a dramatiq.Worker): images in both
response formats, and videos created, polled and downloaded as the SDK does it."""

from __future__ import annotations

import base64
import io

import av
import httpx
import openai
import pytest
from PIL import Image

from tests.api.chat.helpers import assert_books_balance, books
from tests.api.media.conftest import Served
from tests.conftest import create_test_account
from tests.workers.helpers import IMAGE_PRICE, VIDEO_PRICE


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def test_images_generate_returns_a_url_that_opens_without_a_key_and_b64_json_inline(served: Served) -> None:
    account = create_test_account(served.engine, "free")
    before = books(served.engine, account.account_id)
    with served.sdk(account) as client:
        by_url = client.images.generate(model="nano-banana-pro", prompt="a quiet harbour", size="256x256")
        inline = client.images.generate(model="nano-banana-pro", prompt="a quiet harbour", size="256x256",
                                        response_format="b64_json")

    assert by_url.data is not None and len(by_url.data) == 1 and by_url.data[0].url
    helyx = by_url.model_extra["helyx"]  # type: ignore[index]
    assert helyx["credits_charged"] == 200 and helyx["credits_remaining"] == 800 and helyx["job_id"]
    with httpx.Client(trust_env=False, timeout=10) as plain:  # no Authorization header
        opened = plain.get(by_url.data[0].url)
    assert opened.status_code == 200 and opened.headers["content-type"] == "image/png"
    assert decode_png(opened.content).size == (256, 256)

    assert inline.data is not None and inline.data[0].b64_json and inline.data[0].url is None
    assert decode_png(base64.b64decode(inline.data[0].b64_json)).size == (256, 256)
    assert inline.model_extra["helyx"]["credits_remaining"] == 600  # type: ignore[index]
    after = assert_books_balance(served.engine, account.account_id)
    assert before.balance - after.balance == 2 * IMAGE_PRICE


def test_videos_create_and_poll_then_download_content_gives_an_mp4_that_decodes(served: Served) -> None:
    account = create_test_account(served.engine, "plus")
    with served.sdk(account) as client:
        video = client.videos.create_and_poll(model="vo3", prompt="a paper boat on a pond", seconds="4",
                                              size="1280x720")
        assert video.status == "completed", video
        assert video.progress == 100 and video.seconds == "4" and video.size == "1280x720"
        content = client.videos.download_content(video.id)
        data = content.read()

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
    assert (frames[0].width, frames[0].height) == (1280, 720)
    assert len(frames) == 32  # 4 s at 8 fps
    after = assert_books_balance(served.engine, account.account_id)
    assert after.balance == 5000 * 1_000_000 - VIDEO_PRICE


def test_the_sdk_poller_stops_on_a_canceled_video_which_reads_as_failed(served: Served) -> None:
    account = create_test_account(served.engine, "plus")
    with served.sdk(account) as client:
        created = client.videos.create(model="vo3", prompt="changed my mind", seconds="4", size="1280x720")
        client.post(f"/jobs/{created.id}/cancel", cast_to=object)
        video = client.videos.poll(created.id, poll_interval_ms=50)
    assert video.status == "failed" and video.error is not None and video.error.code == "canceled"


def test_refusals_arrive_as_the_sdks_own_exceptions(served: Served) -> None:
    account = create_test_account(served.engine, "free")
    with served.sdk(account) as client:
        with pytest.raises(openai.PermissionDeniedError):
            client.videos.create(model="vo3", prompt="not on this plan")
        with pytest.raises(openai.BadRequestError) as bad:
            client.images.generate(model="nano-banana-pro", prompt="too many", n=5)
    assert bad.value.body["param"] == "n"  # type: ignore[index]
    assert_books_balance(served.engine, account.account_id)


def test_the_sdks_auto_pagination_walks_every_remaining_video_once_after_a_delete(served: Served) -> None:
    account = create_test_account(served.engine, "ultra")
    with served.sdk(account) as client:
        created = [client.videos.create(model="vo3", prompt=f"clip {i}", seconds="4", size="1280x720")
                   for i in range(4)]
        for video in created:
            assert client.videos.poll(video.id, poll_interval_ms=50).status == "completed"
        newest_first = [v.id for v in client.videos.list(limit=100)]
        assert sorted(newest_first) == sorted(v.id for v in created)
        assert client.videos.delete(newest_first[0]).deleted is True

        walked = {limit: [v.id for v in client.videos.list(limit=limit)] for limit in (1, 2, 3, 100)}
        oldest_first = [v.id for v in client.videos.list(limit=1, order="asc")]
    assert walked == {limit: newest_first[1:] for limit in (1, 2, 3, 100)}
    assert oldest_first == newest_first[:0:-1]
