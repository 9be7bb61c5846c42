from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from common.errors import UpstreamError, UpstreamTimeout
from common.providers.base import ImageProvider, ImageRequest
from common.providers.gemini_image import GeminiImageProvider, as_media_file, aspect_ratio, extract_image, image_size
from tests.common.media.conftest import API_KEY, Served
from tests.fakes.gemini_image_upstream import FakeGeminiImageUpstream

pytestmark = pytest.mark.anyio
MODEL = "gemini-3-pro-image-preview"


def _request(width: int = 1024, height: int = 1024, n: int = 1, prompt: str = "a red bicycle") -> ImageRequest:
    return ImageRequest(model=MODEL, prompt=prompt, width=width, height=height, n=n)


def _provider(client: httpx.AsyncClient, served: Served, **kwargs: float) -> GeminiImageProvider:
    return GeminiImageProvider(client, served.base_url, API_KEY, **kwargs)


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("width", "height", "ratio"),
    [(1024, 1024, "1:1"), (1792, 1024, "16:9"), (1024, 1792, "9:16"), (1536, 1024, "3:2"),
     (1024, 1536, "2:3"), (1200, 900, "4:3"), (1000, 800, "5:4"), (2520, 1080, "21:9"), (5000, 100, "21:9")],
)
def test_the_size_maps_to_the_nearest_supported_aspect_ratio(width: int, height: int, ratio: str) -> None:
    assert aspect_ratio(width, height) == ratio


def test_image_size_is_sent_only_above_1k() -> None:
    assert image_size(1024, 1024) is None
    assert image_size(1792, 1024) == "2K"
    assert image_size(4096, 2304) == "4K"


async def test_a_request_is_translated_to_generate_content(
    http_client: httpx.AsyncClient, gemini_image_fake: FakeGeminiImageUpstream, gemini_image_served: Served
) -> None:
    provider = _provider(http_client, gemini_image_served)
    assert isinstance(provider, ImageProvider)
    files = await provider.generate_images(_request(1792, 1024, prompt="a red bicycle"))
    [sent] = gemini_image_fake.requests
    assert sent.method == "POST"
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
    assert sent.headers["x-goog-api-key"] == API_KEY
    assert sent.body == {
        "contents": [{"role": "user", "parts": [{"text": "a red bicycle"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"],
                             "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}},
    }
    assert [f.content_type for f in files] == ["image/png"]
    assert files[0].data == gemini_image_fake.images_sent[0]
    assert _open(files[0].data).size == (128, 72)


@pytest.mark.parametrize("mode", ["inline", "inline_snake", "data_url", "thought_first"])
async def test_the_image_is_found_in_every_documented_place(
    mode: str, http_client: httpx.AsyncClient, gemini_image_fake: FakeGeminiImageUpstream,
    gemini_image_served: Served,
) -> None:
    gemini_image_fake.mode = mode
    [file] = await _provider(http_client, gemini_image_served).generate_images(_request())
    assert file.data == gemini_image_fake.images_sent[-1]  # the final image, not the thought sketch
    assert _open(file.data).format == "PNG"


async def test_n_images_take_n_calls_and_all_differ(
    http_client: httpx.AsyncClient, gemini_image_fake: FakeGeminiImageUpstream, gemini_image_served: Served
) -> None:
    files = await _provider(http_client, gemini_image_served).generate_images(_request(n=3))
    assert len(files) == 3
    assert len(gemini_image_fake.requests) == 3
    assert len({f.data for f in files}) == 3
    assert {f.data for f in files} == set(gemini_image_fake.images_sent)


@pytest.mark.parametrize("vendor_format", ["JPEG", "WEBP", "GIF"])
async def test_an_image_in_another_format_becomes_a_png_of_the_same_size(
    http_client: httpx.AsyncClient, gemini_image_fake: FakeGeminiImageUpstream, gemini_image_served: Served,
    vendor_format: str,
) -> None:
    """Gemini 3 Pro Image often answers a JPEG: a request for a PNG (the only output_format taken)
    got one, said to be `jpeg`."""
    provider = _provider(http_client, gemini_image_served)
    gemini_image_fake.image_format = vendor_format
    [png] = await provider.generate_images(_request())
    assert _open(gemini_image_fake.images_sent[-1]).format == vendor_format
    assert png.content_type == "image/png" and _open(png.data).format == "PNG"
    assert _open(png.data).size == _open(gemini_image_fake.images_sent[-1]).size


@pytest.mark.parametrize(("mode", "code"), [
    ("blocked_prompt", "content_filtered"), ("blocked_finish", "content_filtered"),
    ("text_only", "upstream_no_image"),
])
async def test_an_answer_without_an_image_is_a_final_error(
    mode: str, code: str, http_client: httpx.AsyncClient, gemini_image_fake: FakeGeminiImageUpstream,
    gemini_image_served: Served,
) -> None:
    gemini_image_fake.mode = mode
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, gemini_image_served).generate_images(_request())
    assert caught.value.code == code
    assert caught.value.retryable is False
    assert caught.value.status == 502
    if mode == "text_only":
        assert "quiet lake" in caught.value.message


async def test_bytes_that_are_not_an_image_are_a_retryable_bad_answer(
    http_client: httpx.AsyncClient, gemini_image_fake: FakeGeminiImageUpstream, gemini_image_served: Served
) -> None:
    gemini_image_fake.mode = "garbage"
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, gemini_image_served).generate_images(_request())
    assert caught.value.code == "upstream_bad_response"
    assert caught.value.retryable is True


@pytest.mark.parametrize(("status", "retryable", "code"), [
    (429, True, "upstream_rate_limited"), (500, True, "upstream_error"), (503, True, "upstream_error"),
    (401, False, "upstream_auth"), (403, False, "upstream_auth"), (400, False, "upstream_bad_request"),
    (404, False, "upstream_bad_request"),
])
async def test_http_errors_are_mapped(
    status: int, retryable: bool, code: str, http_client: httpx.AsyncClient,
    gemini_image_fake: FakeGeminiImageUpstream, gemini_image_served: Served, caplog: pytest.LogCaptureFixture,
) -> None:
    gemini_image_fake.fail_status, gemini_image_fake.fail_times = status, -1
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, gemini_image_served).generate_images(_request())
    error = caught.value
    assert (error.retryable, error.code, error.upstream_status) == (retryable, code, status)
    assert f"HTTP {status}" in error.message and API_KEY not in error.message
    about_the_request = status == 400  # not a 404: the model name is the operator's catalog
    # Google's text reaches the client (the job's error) only about the request; else the operator's log
    assert ("fake failure" in error.message) is about_the_request
    logged = [r.getMessage() for r in caplog.records if r.name == "helyx.upstream"]
    assert any("fake failure" in line for line in logged) is not about_the_request


async def test_googles_invalid_key_answer_is_an_auth_error(
    http_client: httpx.AsyncClient, gemini_image_fake: FakeGeminiImageUpstream, gemini_image_served: Served
) -> None:
    gemini_image_fake.fail_status, gemini_image_fake.fail_times, gemini_image_fake.bad_key = 400, -1, True
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, gemini_image_served).generate_images(_request())
    assert (caught.value.code, caught.value.retryable) == ("upstream_auth", False)


async def test_failing_first_calls_then_succeeding(
    http_client: httpx.AsyncClient, gemini_image_fake: FakeGeminiImageUpstream, gemini_image_served: Served
) -> None:
    gemini_image_fake.fail_status, gemini_image_fake.fail_times = 503, 1
    provider = _provider(http_client, gemini_image_served)
    with pytest.raises(UpstreamError) as caught:
        await provider.generate_images(_request())
    assert caught.value.retryable  # the adapter does not retry; the shared retry loop would
    [file] = await provider.generate_images(_request())
    assert file.data == gemini_image_fake.images_sent[-1]
    assert len(gemini_image_fake.requests) == 2


async def test_one_failing_image_of_n_fails_the_request(
    http_client: httpx.AsyncClient, gemini_image_fake: FakeGeminiImageUpstream, gemini_image_served: Served
) -> None:
    gemini_image_fake.fail_status, gemini_image_fake.fail_times = 500, 1
    with pytest.raises(UpstreamError):
        await _provider(http_client, gemini_image_served).generate_images(_request(n=3))


async def test_a_hanging_upstream_times_out(
    http_client: httpx.AsyncClient, gemini_image_fake: FakeGeminiImageUpstream, gemini_image_served: Served
) -> None:
    gemini_image_fake.hang = 3.0
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as caught:
        await _provider(http_client, gemini_image_served, timeout=0.3).generate_images(_request())
    assert time.monotonic() - started < 2
    assert caught.value.retryable is True
    assert caught.value.status == 504


async def test_an_unreachable_upstream_is_retryable(http_client: httpx.AsyncClient) -> None:
    provider = GeminiImageProvider(http_client, "http://127.0.0.1:9/v1beta", API_KEY)
    with pytest.raises(UpstreamError) as caught:
        await provider.generate_images(_request())
    assert (caught.value.code, caught.value.retryable) == ("upstream_unreachable", True)


def test_inline_data_with_a_non_image_mime_type_is_not_taken_for_the_image() -> None:
    body = {"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "text/plain", "data": "aGk="}}]},
                            "finishReason": "STOP"}]}
    with pytest.raises(UpstreamError) as caught:
        extract_image(body)
    assert caught.value.code == "upstream_no_image"


@pytest.mark.parametrize(("mode", "vendor_format", "made"), [("CMYK", "JPEG", "RGB"), ("RGBA", "WEBP", "RGBA"),
                                                            ("L", "JPEG", "L")])
def test_an_image_in_a_mode_a_png_cannot_hold_is_converted_not_refused(mode: str, vendor_format: str,
                                                                       made: str) -> None:
    """A CMYK JPEG was refused as undecodable, and retried: each retry paid the provider again."""
    sent = io.BytesIO()
    Image.new(mode, (64, 48)).save(sent, format=vendor_format)
    png = as_media_file(sent.getvalue())
    assert png.content_type == "image/png"
    assert (_open(png.data).format, _open(png.data).mode, _open(png.data).size) == ("PNG", made, (64, 48))
