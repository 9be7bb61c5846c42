from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time

import av
import pytest
from PIL import Image

from common.errors import UpstreamError
from common.providers import simulated_media
from common.providers.base import ImageProvider, ImageRequest, VideoProvider, VideoRequest
from common.providers.simulated_media import FPS, SimulatedImageProvider, SimulatedVideoProvider

pytestmark = pytest.mark.anyio


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_the_simulated_providers_implement_the_interfaces() -> None:
    assert isinstance(SimulatedImageProvider(), ImageProvider)
    assert isinstance(SimulatedVideoProvider(), VideoProvider)


@pytest.mark.parametrize(("width", "height"), [(1024, 1024), (1792, 1024), (333, 77), (1, 1)])
async def test_an_image_is_a_png_of_exactly_the_requested_size(width: int, height: int) -> None:
    files = await SimulatedImageProvider().generate_images(ImageRequest("sim", "a fox", width, height))
    assert len(files) == 1
    assert files[0].content_type == "image/png"
    assert files[0].data.startswith(b"\x89PNG\r\n\x1a\n")
    image = _image(files[0].data)
    assert image.format == "PNG"
    assert image.size == (width, height)


async def test_the_same_prompt_and_size_give_identical_bytes() -> None:
    provider = SimulatedImageProvider()
    first = await provider.generate_images(ImageRequest("sim", "a lighthouse at night", 256, 128, n=2))
    second = await provider.generate_images(ImageRequest("sim", "a lighthouse at night", 256, 128, n=2))
    assert [f.data for f in first] == [f.data for f in second]


async def test_a_different_prompt_gives_a_different_image() -> None:
    provider = SimulatedImageProvider()
    (a,) = await provider.generate_images(ImageRequest("sim", "a lighthouse at night", 256, 128))
    (b,) = await provider.generate_images(ImageRequest("sim", "a lighthouse at noon", 256, 128))
    assert a.data != b.data


async def test_n_images_are_all_different() -> None:
    files = await SimulatedImageProvider().generate_images(ImageRequest("sim", "clouds", 128, 128, n=4))
    assert len(files) == 4
    assert len({f.data for f in files}) == 4
    assert len({_image(f.data).tobytes() for f in files}) == 4  # the pixels differ, not just metadata


def test_the_png_is_the_rgb_picture_in_one_byte_a_pixel_with_anti_aliased_text() -> None:
    """The PNG is drawn in palette mode (encoding three RGB channels was half an image's CPU):
    the same picture as the RGB rendering a video starts from, with its caption's grey edges."""
    from common.providers.simulated_media import render_image, render_png

    png = _image(render_png("a lighthouse at night", 256, 128))
    assert png.mode == "P"
    assert png.convert("RGB").tobytes() == render_image("a lighthouse at night", 256, 128).tobytes()
    band = png.convert("RGB").crop((0, 100, 256, 128))
    greys = {rgb for _, rgb in band.getcolors(256 * 128) or [] if rgb[0] == rgb[1] == rgb[2]}
    assert {(0, 0, 0), (255, 255, 255)} <= greys
    assert len(greys) > 4  # the text's edges are smoothed, not a black and white cut-out


async def test_the_image_delay_is_spent_and_can_be_cancelled() -> None:
    provider = SimulatedImageProvider(delay=0.3)
    started = time.monotonic()
    await provider.generate_images(ImageRequest("sim", "slow", 32, 32, n=2))
    assert time.monotonic() - started >= 0.3
    task = asyncio.ensure_future(SimulatedImageProvider(delay=30).generate_images(ImageRequest("sim", "x", 8, 8)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _probe(data: bytes) -> tuple[float, int, int, int, str]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        assert container.duration is not None
        return container.duration / av.time_base, frames, stream.width, stream.height, stream.codec_context.name


@pytest.mark.parametrize(("seconds", "width", "height"), [(4, 1280, 720), (2, 720, 1280), (1, 64, 36)])
async def test_a_video_is_a_playable_mp4_of_the_requested_length_and_size(
    seconds: int, width: int, height: int
) -> None:
    video = await SimulatedVideoProvider().generate_video(VideoRequest("sim", "waves", seconds, width, height))
    assert video.content_type == "video/mp4"
    assert video.data[4:8] == b"ftyp"
    duration, frames, w, h, codec = _probe(video.data)
    assert (w, h) == (width, height)
    assert codec in ("h264", "mpeg4")
    assert abs(duration - seconds) <= 1 / FPS
    assert abs(frames - seconds * FPS) <= 1


async def test_video_frames_are_deterministic_from_the_prompt() -> None:
    provider = SimulatedVideoProvider()
    a = await provider.generate_video(VideoRequest("sim", "a calm sea", 1, 128, 72))
    b = await provider.generate_video(VideoRequest("sim", "a calm sea", 1, 128, 72))
    c = await provider.generate_video(VideoRequest("sim", "a stormy sea", 1, 128, 72))

    def first_frame(data: bytes) -> bytes:
        with av.open(io.BytesIO(data)) as container:
            return next(container.decode(video=0)).to_image().tobytes()

    assert first_frame(a.data) == first_frame(b.data)
    assert first_frame(a.data) != first_frame(c.data)


async def test_video_progress_rises_to_100() -> None:
    seen: list[int] = []
    await SimulatedVideoProvider().generate_video(VideoRequest("sim", "p", 4, 64, 36), on_progress=seen.append)
    assert seen[-1] == 100
    assert seen == sorted(seen)
    assert len(seen) >= 4
    assert all(0 <= p <= 100 for p in seen)


async def test_a_slow_videos_progress_moves_at_least_every_half_second() -> None:
    """Its delay in steps, each after a new progress value: a 4 s clip with a 30 s delay read 0 %
    for its first 7.5 s (found by a README walkthrough)."""
    events: list[tuple[str, float]] = []

    async def recorded_sleep(seconds: float) -> None:
        events.append(("sleep", seconds))
        await asyncio.sleep(0)

    await SimulatedVideoProvider(delay=30, sleep=recorded_sleep).generate_video(
        VideoRequest("sim", "p", 4, 64, 36), on_progress=lambda value: events.append(("progress", value)))
    sleeps = [seconds for kind, seconds in events if kind == "sleep"]
    assert sum(sleeps) == pytest.approx(30)
    assert max(sleeps) <= simulated_media.PROGRESS_STEP_SECONDS
    values = [value for kind, value in events if kind == "progress"]
    assert values == sorted(set(values)) and values[-1] == 100
    # a new value before every step of the delay
    kinds = [kind for kind, _ in events]
    assert kinds[:-1] == ["progress", "sleep"] * len(sleeps)


async def test_a_video_job_can_be_cancelled_mid_way() -> None:
    seen: list[int] = []
    provider = SimulatedVideoProvider(delay=20)
    task = asyncio.ensure_future(provider.generate_video(VideoRequest("sim", "p", 4, 64, 36), seen.append))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 100 not in seen


async def test_the_encode_does_not_block_the_event_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.ensure_future(ticker())
    started = time.monotonic()
    await SimulatedVideoProvider().generate_video(VideoRequest("sim", "busy", 4, 1280, 720))
    elapsed = time.monotonic() - started
    tick_task.cancel()
    assert elapsed < 5  # about 0.3 s on two cores; generous for a loaded CI box
    assert ticks >= elapsed / 0.01 * 0.3  # the loop kept turning while frames were encoded


@pytest.mark.parametrize(("seconds", "width", "height"), [(0, 64, 36), (2, 65, 36), (2, 64, 37)])
async def test_an_impossible_video_is_refused(seconds: int, width: int, height: int) -> None:
    with pytest.raises(UpstreamError) as caught:
        await SimulatedVideoProvider().generate_video(VideoRequest("sim", "p", seconds, width, height))
    assert caught.value.retryable is False


def test_the_caption_font_is_loaded_once_per_size_and_thread_not_per_image_or_frame(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the font was a tenth of a simulated image's CPU, and ran for every video frame."""
    import threading

    from PIL import ImageFont

    from common.providers import simulated_media

    loads: list[tuple[int | None, str]] = []
    real = ImageFont.load_default

    def counting(size: float | None = None) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        loads.append((None if size is None else int(size), threading.current_thread().name))
        return real(size)

    monkeypatch.setattr(ImageFont, "load_default", counting)
    monkeypatch.setattr(simulated_media, "_fonts", threading.local(), raising=False)  # a fresh cache
    first = simulated_media.render_png("a fox", 256, 256)
    for _ in range(3):
        assert simulated_media.render_png("a fox", 256, 256) == first  # the same bytes as before
    assert len(loads) == 1

    elsewhere = threading.Thread(target=simulated_media.render_png, args=("a fox", 256, 256), name="other")
    elsewhere.start()
    elsewhere.join()
    assert [thread for _, thread in loads].count("other") == 1  # each thread its own


def test_making_images_does_not_load_pyav() -> None:
    """PyAV and its FFmpeg libraries (~19 MB resident) load at a process's first video only."""
    program = ("import asyncio, sys\n"
               "from common.providers.base import ImageRequest\n"
               "from common.providers.simulated_media import SimulatedImageProvider\n"
               "asyncio.run(SimulatedImageProvider().generate_images(ImageRequest('m', 'a cat', 64, 64, 2)))\n"
               "print('av' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"
