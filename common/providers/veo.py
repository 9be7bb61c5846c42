"""vo3 through Veo's long-running `predictLongRunning` (Gemini API, or Vertex AI's response form).

    POST {base_url}/models/{model}:predictLongRunning          x-goog-api-key: KEY
    {"instances": [{"prompt": P}],
     "parameters": {"aspectRatio": "16:9", "durationSeconds": 8, "resolution": "720p"}}
      → {"name": "models/veo-3.1-generate-preview/operations/abc"}
    GET {base_url}/{name}   every poll_interval s until "done": true (a Vertex AI operation, named
      "projects/...": POST {base_url}/{model path}:fetchPredictOperation {"operationName": name}), then either
      Gemini API: response.generateVideoResponse.generatedSamples[0].video.uri → GET it (3xx followed)
      Vertex AI:  response.videos[0].bytesBase64Encoded (+ mimeType)  or  .gcsUri (refused: needs GCP auth)

Choices:
- aspect ratio: "9:16" when the request is taller than wide, else "16:9"; resolution "1080p"
  when the shorter side is at least 1080, else "720p". Duration: the shortest supported length
  (`durations`, default 4/6/8 s) that covers the request, else the longest, so a 12 s request
  gets 8 s. `generateAudio` and `sampleCount` are not sent (the Gemini API rejects them).
- An operation `error` is retryable for the transient google.rpc codes (DEADLINE_EXCEEDED,
  RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE), see `google_errors.operation_error`.
  No video with raiMediaFilteredCount/Reasons is a non-retryable `content_filtered`.
- A failed poll that may be transient is tried again (up to `poll_retries` in a row) rather than
  failing the job: a retry of the whole call would pay for a second video. So is a failed
  download of a finished video (Google bills a video once it is made), and a download that still
  fails fails the job for good: sending it again would make, and bill, another video.
- Progress: metadata `progressPercent` when the upstream sends one, else a time estimate
  against `expected_seconds`, capped at 95 and never going back; 100 once the bytes are here.
- The download carries the API key only while it stays on base_url's origin, also across
  redirects (httpx would forward a custom key header to any host).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from typing import Any

import httpx

from common.errors import UpstreamError, UpstreamTimeout
from common.providers.base import MediaFile, ProgressCallback, VideoRequest
from common.providers.google_errors import bad_response, content_filtered, json_object, operation_error, send

_WHAT = "Veo video generation"
EXPECTED_SECONDS = 90.0  # a Veo clip's usual time, for progress and polling, unless the catalog says otherwise
_MAX_REDIRECTS = 5


def request_body(request: VideoRequest, durations: tuple[int, ...]) -> dict[str, Any]:
    covering = [d for d in sorted(durations) if d >= request.seconds]
    return {
        "instances": [{"prompt": request.prompt}],
        "parameters": {
            "aspectRatio": "9:16" if request.height > request.width else "16:9",
            "durationSeconds": covering[0] if covering else max(durations),
            "resolution": "1080p" if min(request.width, request.height) >= 1080 else "720p",
        },
    }


def _media_entries(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The video objects of a finished operation, whichever form it came in."""
    inner = response.get("generateVideoResponse") or response
    entries: list[Any] = [s.get("video") for s in inner.get("generatedSamples") or [] if isinstance(s, dict)]
    entries += [v.get("video") for v in inner.get("generatedVideos") or [] if isinstance(v, dict)]
    entries += list(inner.get("videos") or [])
    return [e for e in entries if isinstance(e, dict)]


def _filtered_error(response: dict[str, Any]) -> UpstreamError | None:
    inner = response.get("generateVideoResponse") or response
    reasons = [str(r) for r in inner.get("raiMediaFilteredReasons") or []]
    if not reasons and not inner.get("raiMediaFilteredCount"):
        return None
    detail = "; ".join(reasons) if reasons else "no reason given"
    return content_filtered(f"{_WHAT}: the provider's safety filter withheld the video ({detail})")


def _metadata_progress(operation: dict[str, Any]) -> int | None:
    """The upstream's percentage, if it sent a usable one (Python's JSON parser lets NaN through)."""
    metadata = operation.get("metadata")
    if not isinstance(metadata, dict):
        return None
    for key in ("progressPercent", "progress_percent", "progress"):
        value = metadata.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return int(value)
    return None


class VeoVideoProvider:
    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        poll_interval: float = 5.0,
        max_wait: float = 1200.0,
        *,
        durations: tuple[int, ...] = (4, 6, 8),
        expected_seconds: float = EXPECTED_SECONDS,
        poll_retries: int = 3,
    ) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._origin = httpx.URL(self._base_url).copy_with(path="/", query=None, fragment=None)
        self._api_key = api_key
        self.poll_interval, self.max_wait = poll_interval, max_wait
        self.durations, self.expected_seconds, self.poll_retries = durations, expected_seconds, poll_retries

    async def generate_video(
        self, request: VideoRequest, on_progress: ProgressCallback | None = None
    ) -> MediaFile:
        deadline = time.monotonic() + self.max_wait
        progress = _Progress(on_progress, self.expected_seconds)
        path = request.model if "/" in request.model else f"models/{request.model}"
        submitted = await send(
            self._client, "POST", f"{self._base_url}/{path}:predictLongRunning", what=_WHAT,
            api_key=self._api_key, json=request_body(request, self.durations),
        )
        operation = json_object(submitted, _WHAT)
        name = operation.get("name")
        if not isinstance(name, str) or not name:
            raise bad_response(_WHAT, "the operation has no name")
        progress.report(0)
        failures = 0
        while not operation.get("done"):
            progress.report(_metadata_progress(operation))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamTimeout(f"{_WHAT}: not done after {self.max_wait:g} s (operation {name})")
            await asyncio.sleep(min(self.poll_interval, remaining))
            try:
                polled = await self._poll(path, name)
                operation, failures = json_object(polled, _WHAT), 0
            except UpstreamError as exc:
                failures += 1
                if not exc.retryable or failures > self.poll_retries:
                    raise
        video = await self._result(operation)
        progress.done()
        return video

    async def _poll(self, path: str, name: str) -> httpx.Response:
        """The Gemini API reads an operation by its name; Vertex AI's operations ("projects/...")
        are read by a POST of the name to the model's fetchPredictOperation."""
        if name.startswith("projects/"):
            return await send(self._client, "POST", f"{self._base_url}/{path}:fetchPredictOperation", what=_WHAT,
                              api_key=self._api_key, json={"operationName": name})
        return await send(self._client, "GET", f"{self._base_url}/{name}", what=_WHAT, api_key=self._api_key)

    async def _result(self, operation: dict[str, Any]) -> MediaFile:
        error = operation.get("error")
        if isinstance(error, dict):
            raise operation_error(error, _WHAT, self._api_key)
        response = operation.get("response") or {}
        for entry in _media_entries(response):
            mime = str(entry.get("mimeType") or entry.get("mime_type") or "video/mp4")
            if not mime.startswith("video/"):  # served from our origin: never as HTML or SVG, whatever it says
                mime = "video/mp4"
            encoded = entry.get("bytesBase64Encoded") or entry.get("videoBytes") or entry.get("encodedVideo")
            if encoded:
                return MediaFile(data=_decode(str(encoded)), content_type=mime)
            uri = entry.get("uri") or entry.get("gcsUri")
            if isinstance(uri, str) and uri.startswith("gs://"):
                raise UpstreamError(
                    f"{_WHAT}: the video was written to Cloud Storage ({uri}), which needs Google Cloud "
                    "credentials to read; configure the provider to return the bytes instead",
                    retryable=False, code="upstream_unsupported_response",
                )
            if isinstance(uri, str) and uri.startswith(("http://", "https://")):
                return await self._download(uri)
        raise _filtered_error(response) or bad_response(_WHAT, "the finished operation holds no video")

    async def _download(self, uri: str) -> MediaFile:
        """The finished video, tried up to 1 + `poll_retries` times. The video is made and paid
        for: a failure here is final, never a reason to submit it again."""
        failures = 0
        while True:
            try:
                return await self._download_once(uri)
            except UpstreamError as exc:
                failures += 1
                if exc.retryable and failures <= self.poll_retries:
                    await asyncio.sleep(self.poll_interval)
                    continue
                raise UpstreamError(f"{exc.message} (the video was made: it is not requested again)",
                                    retryable=False, upstream_status=exc.upstream_status, code=exc.code) from exc

    async def _download_once(self, uri: str) -> MediaFile:
        url = httpx.URL(uri)
        for _ in range(_MAX_REDIRECTS + 1):
            same_origin = url.copy_with(path="/", query=None, fragment=None) == self._origin
            response = await send(self._client, "GET", url, what=f"{_WHAT} download",
                                  api_key=self._api_key if same_origin else None, return_redirects=True)
            if not response.is_redirect:
                if not response.content:
                    raise bad_response(_WHAT, "the downloaded video is empty")
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                if not content_type.startswith("video/"):
                    content_type = "video/mp4"
                return MediaFile(data=response.content, content_type=content_type)
            location = response.headers.get("location")
            if not location:
                raise bad_response(_WHAT, "a redirect without a Location")
            url = url.join(location)
        raise bad_response(_WHAT, f"more than {_MAX_REDIRECTS} redirects downloading the video")


def _decode(encoded: str) -> bytes:
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_response(_WHAT, "the video bytes are not base64") from exc
    if not data:
        raise bad_response(_WHAT, "the video is empty")
    return data


class _Progress:
    """Reports 0..100 without ever going back; a time estimate fills in when metadata is silent."""

    def __init__(self, callback: ProgressCallback | None, expected_seconds: float) -> None:
        self._callback, self._expected = callback, expected_seconds
        self._started, self._last = time.monotonic(), -1

    def report(self, value: int | None) -> None:
        """Work in progress: capped at 95, so only `done` says 100."""
        if value is None:
            value = int(100 * (time.monotonic() - self._started) / self._expected)
        self._emit(min(value, 95))

    def done(self) -> None:
        self._emit(100)

    def _emit(self, value: int) -> None:
        value = max(value, self._last, 0)
        if self._callback is not None and value != self._last:
            self._callback(value)
        self._last = value
