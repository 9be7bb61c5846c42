"""nano-banana-pro through Gemini's `generateContent` (e.g. gemini-3-pro-image).

    POST {base_url}/models/{model}:generateContent     x-goog-api-key: KEY
    {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
     "generationConfig": {"responseModalities": ["TEXT", "IMAGE"],
                          "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}}}

Choices:
- n images = n concurrent calls, one image each: the image models do not honour
  `candidateCount` > 1. If one call fails the others are cancelled and its error is raised, so
  the caller gets exactly n images or an error.
- width×height picks the nearest supported aspect ratio (by log-ratio) and, for a longer side
  above 1024 / 2048 pixels, `imageSize` "2K" / "4K" (1K is the default and is not sent). The
  image keeps the model's own pixel size: it is never resampled.
- Image bytes come from `inlineData` (or `inline_data`) parts, else from a
  `data:image/...;base64,` URL inside a text part; thought parts are skipped. A PNG (as Pillow
  detects it, not as claimed) is kept as sent; any other format (Gemini often answers a JPEG) is
  converted to PNG, the images API's only output_format; undecodable bytes are a retryable bad answer.
- No image: a blocked prompt or a safety finish reason is `content_filtered`, anything else is
  `upstream_no_image`; neither is retryable.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
import re
from typing import Any

import httpx
from PIL import Image

from common.errors import UpstreamError
from common.providers.base import ImageRequest, MediaFile
from common.providers.google_errors import bad_response, content_filtered, json_object, send

ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
BLOCKING_FINISH_REASONS = frozenset({
    "SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION",
    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
})
_DATA_URL = re.compile(r"data:(image/[\w.+-]+);base64,([A-Za-z0-9+/_-]+=*)")
_WHAT = "Gemini image generation"
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})  # the modes Pillow writes as PNG


def aspect_ratio(width: int, height: int) -> str:
    """The supported ratio closest to width:height (distance in log space, so 2:1 and 1:2 are fair)."""
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(math.log(int(w) / int(h)) - target)

    return min(ASPECT_RATIOS, key=distance)


def image_size(width: int, height: int) -> str | None:
    longest = max(width, height)
    if longest > 2048:
        return "4K"
    return "2K" if longest > 1024 else None


def request_body(prompt: str, width: int, height: int) -> dict[str, Any]:
    image_config: dict[str, str] = {"aspectRatio": aspect_ratio(width, height)}
    size = image_size(width, height)
    if size is not None:
        image_config["imageSize"] = size
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": image_config},
    }


def _b64decode(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError) as exc:
            raise bad_response(_WHAT, "image data is not base64") from exc


def _parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for candidate in body.get("candidates") or []:
        content = candidate.get("content") if isinstance(candidate, dict) else None
        if isinstance(content, dict):
            parts.extend(p for p in content.get("parts") or [] if isinstance(p, dict))
    # Gemini 3 Pro Image may return interim "thought" images before the final one.
    return [p for p in parts if not p.get("thought")]


def extract_image(body: dict[str, Any]) -> bytes:
    """The first image in a generateContent answer, or the reason there is none."""
    feedback = body.get("promptFeedback") or {}
    if feedback.get("blockReason"):
        detail = feedback.get("blockReasonMessage") or feedback["blockReason"]
        raise content_filtered(f"{_WHAT}: the provider blocked the prompt ({detail})")
    texts: list[str] = []
    for part in _parts(body):
        inline = part.get("inlineData") or part.get("inline_data")
        if isinstance(inline, dict) and inline.get("data"):
            mime = str(inline.get("mimeType") or inline.get("mime_type") or "image/")
            if mime.startswith("image/"):
                return _b64decode(str(inline["data"]))
        text = part.get("text")
        if isinstance(text, str):
            match = _DATA_URL.search(text)
            if match:
                return _b64decode(match.group(2))
            texts.append(text)
    reasons: set[Any] = {c.get("finishReason") for c in body.get("candidates") or [] if isinstance(c, dict)}
    blocked = reasons & BLOCKING_FINISH_REASONS
    if blocked:
        raise content_filtered(f"{_WHAT}: the provider withheld the image ({', '.join(sorted(blocked))})")
    said = " ".join(texts).strip()[:200]
    raise UpstreamError(
        f"{_WHAT}: the answer held no image" + (f"; the model said: {said}" if said else ""),
        retryable=False,
        code="upstream_no_image",
    )


def as_media_file(data: bytes) -> MediaFile:
    """Checks that the bytes are an image, and makes it a PNG (as the images API promises: its
    `output_format` is png only) when it is not one: Gemini 3 Pro Image often answers a JPEG,
    sometimes under another MIME type, which only the bytes tell."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            image_format = probe.format or ""
            probe.verify()
        if image_format == "PNG":
            return MediaFile(data=data, content_type="image/png")
        with Image.open(io.BytesIO(data)) as image:
            png: Image.Image = image
            if image.mode not in _PNG_MODES:  # CMYK, YCbCr, F...: a PNG cannot hold them
                png = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            out = io.BytesIO()
            png.save(out, format="PNG", compress_level=3)  # zlib's default 6 takes twice as long for ~5 % less
            return MediaFile(data=out.getvalue(), content_type="image/png")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise bad_response(_WHAT, "the image data cannot be decoded") from exc


class GeminiImageProvider:
    def __init__(
        self, client: httpx.AsyncClient, base_url: str, api_key: str | None, *, timeout: float = 180.0
    ) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout  # one image often takes 20-60 s, longer than a chat call

    def _url(self, model: str) -> str:
        path = model if "/" in model else f"models/{model}"  # Vertex: publishers/google/models/...
        return f"{self._base_url}/{path}:generateContent"

    async def _one(self, request: ImageRequest) -> MediaFile:
        response = await send(
            self._client, "POST", self._url(request.model), what=_WHAT, api_key=self._api_key,
            json=request_body(request.prompt, request.width, request.height), timeout=self._timeout,
        )
        data = extract_image(json_object(response, _WHAT))
        return await asyncio.to_thread(as_media_file, data)

    async def generate_images(self, request: ImageRequest) -> list[MediaFile]:
        tasks = [asyncio.ensure_future(self._one(request)) for _ in range(request.n)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
