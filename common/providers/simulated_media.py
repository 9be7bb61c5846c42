"""Simulated image and video providers: real, playable files drawn locally, no network.

Everything is deterministic from the prompt (and size, and the image's index), so a test can
compare bytes. `delay` seconds are spread over the work with `asyncio.sleep`, so a test can cancel
or kill a job mid-way; the CPU work runs in a thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import random
import textwrap
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from common.errors import UpstreamError
from common.providers.base import ImageRequest, MediaFile, ProgressCallback, VideoRequest

FPS = 8  # low on purpose: a 4 s 1280x720 clip encodes in well under a second
PROGRESS_STEP_SECONDS = 0.5  # a slow simulated video's progress moves at least this often
_Color = tuple[int, int, int]


def _rng(prompt: str, width: int, height: int, index: int) -> random.Random:
    digest = hashlib.sha256(f"{index}|{width}x{height}|{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _color(rng: random.Random) -> _Color:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_fonts = threading.local()  # a font object per thread: FreeType's faces are not for sharing across threads


def _font(size: int) -> _Font:
    """Loaded once per size and thread: loading it (Pillow parses its embedded font each time) was
    a tenth of an image's CPU, and ran again for every frame of a video."""
    loaded: dict[int, _Font] = _fonts.__dict__.setdefault("by_size", {})
    if size not in loaded:
        try:
            loaded[size] = ImageFont.load_default(size=size)
        except ImportError:  # Pillow built without FreeType: the small bitmap font still works
            loaded[size] = ImageFont.load_default()
    return loaded[size]


# The still image is drawn in palette mode ("P", one byte a pixel): PNG encodes that several
# times faster than RGB (no per-row filter search over three channels), and drawing is cheaper.
# Its 256 entries: the background's gradient, the caption's grey ramp, the shapes' colours.
_GRADIENT_LEVELS = 224
_CAPTION_BLACK = _GRADIENT_LEVELS  # the caption's ramp: black to white, for anti-aliased text
_CAPTION_LEVELS = 16
_WHITE = _CAPTION_BLACK + _CAPTION_LEVELS - 1
_FIRST_SHAPE = _CAPTION_BLACK + _CAPTION_LEVELS
_TO_GRADIENT = [v * (_GRADIENT_LEVELS - 1) // 255 for v in range(256)]
_TO_CAPTION = [_CAPTION_BLACK + (v * (_CAPTION_LEVELS - 1) + 127) // 255 for v in range(256)]
_CAPTION_PALETTE = [round(i * 255 / (_CAPTION_LEVELS - 1)) for i in range(_CAPTION_LEVELS) for _ in range(3)]


def _gradient_palette(near: _Color, far: _Color) -> list[int]:
    """RGB triplets from `far` (index 0) to `near` (the last gradient index)."""
    steps = _GRADIENT_LEVELS - 1
    channels = [[f + (n - f) * i // steps for i in range(_GRADIENT_LEVELS)] for n, f in zip(near, far, strict=True)]
    return [value for rgb in zip(*channels, strict=True) for value in rgb]


def render_palette_image(prompt: str, width: int, height: int, index: int = 0) -> Image.Image:
    """A gradient, a few shapes and the prompt's text, all chosen by a hash of the inputs."""
    rng = _rng(prompt, width, height, index)
    mask = Image.linear_gradient("L").resize((width, height))
    if rng.random() < 0.5:
        mask = mask.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    near, far = _color(rng), _color(rng)  # where the mask is white, and where it is black
    image = mask.point(_TO_GRADIENT).convert("P")  # the index of each pixel's step on the gradient
    palette = _gradient_palette(near, far) + _CAPTION_PALETTE
    draw = ImageDraw.Draw(image)
    for shape_index in range(rng.randint(3, 6)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randint(1, max(1, width // 2)), y0 + rng.randint(1, max(1, height // 2)))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        palette += _color(rng)
        shape(box, fill=_FIRST_SHAPE + shape_index, outline=_WHITE, width=max(1, min(width, height) // 200))
    image.putpalette(palette)
    _draw_caption(image, f"{prompt}  [simulated #{index + 1}]")
    return image


def render_image(prompt: str, width: int, height: int, index: int = 0) -> Image.Image:
    """The same picture in RGB (a video's background, a fake vendor's JPEG)."""
    return render_palette_image(prompt, width, height, index).convert("RGB")


def _draw_caption(image: Image.Image, text: str) -> None:
    """White anti-aliased text on a black band at the bottom: drawn in greys on a band of its
    own, then pasted in as the palette's grey ramp."""
    width, height = image.size
    size = max(8, min(width, height) // 18)
    font = _font(size)
    lines = textwrap.wrap(text, width=max(8, int(width / (size * 0.6))))[:4]
    if not lines:
        return
    margin = max(2, size // 3)
    top = height - margin - len(lines) * (size + margin)
    band_top = max(0, top - margin)
    band = Image.new("L", (width, height - band_top), 0)
    draw = ImageDraw.Draw(band)
    for row, line in enumerate(lines):
        draw.text((margin, top - band_top + row * (size + margin)), line, fill=255, font=font)
    image.paste(band.point(_TO_CAPTION).convert("P"), (0, band_top))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def render_png(prompt: str, width: int, height: int, index: int = 0) -> bytes:
    return _png(render_palette_image(prompt, width, height, index))


class SimulatedImageProvider:
    """PNG images of exactly the requested size; image i of n is seeded with i, so all differ."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def generate_images(self, request: ImageRequest) -> list[MediaFile]:
        if request.width < 1 or request.height < 1 or request.n < 1:
            raise UpstreamError("Invalid image size or count", code="invalid_request")
        files: list[MediaFile] = []
        for index in range(request.n):
            await asyncio.sleep(self.delay / request.n)
            data = await asyncio.to_thread(render_png, request.prompt, request.width, request.height, index)
            files.append(MediaFile(data=data, content_type="image/png"))
        return files


@cache
def _pyav() -> tuple[Any, str]:
    """PyAV and the codec it offers, imported at the first video: PyAV and its FFmpeg libraries
    are ~19 MB of resident memory that a process making only images need not carry."""
    import av

    return av, "libx264" if "libx264" in av.codecs_available else "mpeg4"


class _Mp4Writer:
    """H.264 (or MPEG-4 Part 2 when PyAV lacks libx264) yuv420p in MP4, written to memory."""

    def __init__(self, width: int, height: int, fps: int = FPS) -> None:
        self._av, codec = _pyav()
        self._buffer = io.BytesIO()
        self._container = self._av.open(self._buffer, mode="w", format="mp4")
        stream = self._container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "28"}
        else:
            stream.bit_rate = 1_000_000
        # One encoding thread: a worker already runs its jobs side by side, and each extra encoder
        # thread keeps frames of its own (8 concurrent 720p encodes: ~100 MB more at the peak).
        stream.codec_context.thread_count = 1
        self._stream = stream
        self._pts = 0

    def write(self, images: Iterable[Image.Image]) -> None:
        for image in images:
            frame = self._av.VideoFrame.from_image(image)
            frame.pts = self._pts
            self._pts += 1
            self._container.mux(self._stream.encode(frame))

    def finish(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._buffer.getvalue()


class _FrameDrawer:
    """Frame t: the prompt's still image with a ball moving on a prompt-seeded Lissajous path."""

    def __init__(self, prompt: str, width: int, height: int, fps: int = FPS) -> None:
        self._background = render_image(prompt, width, height)
        rng = _rng(prompt, width, height, -1)
        self._phase, self._color = rng.uniform(0, math.tau), _color(rng)
        self._width, self._height, self._fps = width, height, fps

    def frames(self, start: int, stop: int) -> Iterator[Image.Image]:
        """Drawn one at a time as the encoder takes them: a second of 720p frames held at once
        was ~30 MB per job, with 8 jobs at once in a worker process."""
        return (self._frame(i) for i in range(start, stop))

    def _frame(self, i: int) -> Image.Image:
        image = self._background.copy()
        t = i / self._fps
        radius = max(2, min(self._width, self._height) // 10)
        cx = self._width / 2 + (self._width / 2 - radius) * math.sin(1.3 * t + self._phase)
        cy = self._height / 2 + (self._height / 2 - radius) * math.sin(0.9 * t)
        draw = ImageDraw.Draw(image)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=self._color)
        draw.text((4, 4), f"{t:5.2f}s", fill=(255, 255, 255), font=_font(max(8, radius // 2)))
        return image


class SimulatedVideoProvider:
    """A real MP4 of exactly `seconds` x FPS frames at the requested (even) size."""

    def __init__(self, delay: float = 0.0, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.delay = delay
        self._sleep = sleep  # (a test counts the steps of the delay with its own)

    async def generate_video(
        self, request: VideoRequest, on_progress: ProgressCallback | None = None
    ) -> MediaFile:
        width, height, seconds = request.width, request.height, request.seconds
        if seconds < 1 or width < 2 or height < 2 or width % 2 or height % 2:
            raise UpstreamError(
                f"Cannot encode {seconds} s at {width}x{height}: seconds must be >= 1 and the size even",
                code="invalid_request",
            )
        drawer = await asyncio.to_thread(_FrameDrawer, request.prompt, width, height)
        writer = await asyncio.to_thread(_Mp4Writer, width, height)
        # One chunk per second of video: progress and the delay advance between chunks, the delay in
        # steps of at most PROGRESS_STEP_SECONDS (a 4 s clip with a 30 s delay read 0 % for 7.5 s).
        # If the task is cancelled mid-chunk, the writer is simply dropped (the thread still owns it).
        steps = max(1, math.ceil(self.delay / seconds / PROGRESS_STEP_SECONDS))
        for second in range(seconds):
            for step in range(steps):
                if on_progress is not None:
                    on_progress((second * steps + step) * 100 // (seconds * steps))
                await self._sleep(self.delay / seconds / steps)
            frames = range(second * FPS, (second + 1) * FPS)

            # A def, not a lambda: mypy cannot infer a lambda with a default argument passed to to_thread.
            def write_chunk(r: range = frames) -> None:
                writer.write(drawer.frames(r.start, r.stop))

            await asyncio.to_thread(write_chunk)
        data = await asyncio.to_thread(writer.finish)
        if on_progress is not None:
            on_progress(100)
        return MediaFile(data=data, content_type="video/mp4")
