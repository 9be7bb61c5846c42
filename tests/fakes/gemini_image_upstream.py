"""A fake Gemini API `generateContent` for image models, speaking the documented wire format.

Serve `FakeGeminiImageUpstream().app` over HTTP; the adapter's base_url is `{server}/v1beta`.
Knobs are plain attributes, set by a test and put back by `reset()`:

    mode          "inline"          image in an `inlineData` part (camelCase, the REST form)
                  "inline_snake"    image in an `inline_data` / `mime_type` part
                  "data_url"        image as a data:image/png;base64 URL inside a text part
                  "thought_first"   an interim `thought: true` image, then the final one
                  "blocked_prompt"  promptFeedback.blockReason SAFETY, no candidates
                  "blocked_finish"  a candidate with finishReason IMAGE_SAFETY and no parts
                  "text_only"       a candidate that only talks
                  "garbage"         inlineData whose bytes are not an image
    image_format  "PNG" (default), "JPEG" or "GIF": what format the image is sent in
    fail_status   HTTP status for failing calls (429, 500, 401, 400, ...)
    fail_times    how many first calls fail (-1: every call)
    bad_key       with fail_status 400: Google's "API key not valid" (reason API_KEY_INVALID)
    hang          seconds to sleep before answering (beyond the client's timeout = a hang)

Every request is recorded in `requests` (method, path, headers, JSON body).
"""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.providers.simulated_media import render_image

GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
_RATIO_SIZES = {"1:1": (64, 64), "16:9": (128, 72), "9:16": (72, 128)}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


async def record(request: Request, into: list[RecordedRequest]) -> RecordedRequest:
    raw = await request.body()
    body: Any = None
    if raw:
        try:
            body = await request.json()
        except ValueError:
            body = raw
    entry = RecordedRequest(request.method, request.url.path, request.url.query, dict(request.headers), body)
    into.append(entry)
    return entry


def google_error(status: int, message: str, reason: str | None = None) -> JSONResponse:
    status_name = GOOGLE_STATUS.get(status, "UNKNOWN")
    error: dict[str, Any] = {"code": status, "message": message, "status": status_name}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}]
    return JSONResponse({"error": error}, status_code=status)


def image_bytes(prompt: str, ratio: str, index: int, image_format: str = "PNG") -> bytes:
    """A real image drawn with Pillow, sized after the requested aspect ratio."""
    width, height = _RATIO_SIZES.get(ratio, (80, 60))
    out = io.BytesIO()
    render_image(prompt, width, height, index).save(out, format=image_format)
    return out.getvalue()


class FakeGeminiImageUpstream:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.reset()
        self.app = Starlette(routes=[
            Route("/v1beta/models/{model}:generateContent", self._generate, methods=["POST"]),
        ])

    def reset(self) -> None:
        self.requests.clear()
        self.mode = "inline"
        self.image_format = "PNG"
        self.fail_status: int | None = None
        self.fail_times = 0
        self.bad_key = False
        self.hang = 0.0
        self.calls = 0
        self.images_sent: list[bytes] = []

    async def _generate(self, request: Request) -> JSONResponse:
        entry = await record(request, self.requests)
        self.calls += 1
        call = self.calls
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.fail_status and (self.fail_times < 0 or call <= self.fail_times):
            reason = "API_KEY_INVALID" if self.bad_key else None
            message = "API key not valid. Please pass a valid API key." if self.bad_key else "fake failure"
            return google_error(self.fail_status, message, reason)
        prompt = entry.body["contents"][0]["parts"][0]["text"]
        ratio = entry.body["generationConfig"]["imageConfig"]["aspectRatio"]
        return JSONResponse(self._answer(prompt, ratio, call))

    def _image_part(self, prompt: str, ratio: str, call: int) -> dict[str, Any]:
        data = image_bytes(prompt, ratio, call, self.image_format)
        self.images_sent.append(data)
        mime = f"image/{self.image_format.lower()}"
        encoded = base64.b64encode(data).decode()
        if self.mode == "garbage":
            encoded = base64.b64encode(b"not an image").decode()
        elif self.mode == "inline_snake":
            return {"inline_data": {"mime_type": mime, "data": encoded}}
        if self.mode == "data_url":
            return {"text": f"Here is your picture: ![image](data:{mime};base64,{encoded}) enjoy."}
        return {"inlineData": {"mimeType": mime, "data": encoded}}

    def _answer(self, prompt: str, ratio: str, call: int) -> dict[str, Any]:
        usage = {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302}
        if self.mode == "blocked_prompt":
            return {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage}
        if self.mode == "blocked_finish":
            return {"candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "IMAGE_SAFETY",
                                    "index": 0}], "usageMetadata": usage}
        parts: list[dict[str, Any]] = [{"text": "Sure, here is the image you asked for."}]
        if self.mode == "text_only":
            parts = [{"text": "I would rather describe it: a quiet lake at dawn."}]
        elif self.mode == "thought_first":
            thought = image_bytes("interim sketch", ratio, 999, "PNG")
            parts.append({"inlineData": {"mimeType": "image/png", "data": base64.b64encode(thought).decode()},
                          "thought": True})
            parts.append(self._image_part(prompt, ratio, call))
        else:
            parts.append(self._image_part(prompt, ratio, call))
        candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": "gemini-3-pro-image-preview",
        }

