"""A fake Veo `predictLongRunning` upstream (Gemini API paths), with Vertex AI's response forms too.

Serve `FakeVeoUpstream().app` over HTTP; the adapter's base_url is `{server}/v1beta`.

    POST /v1beta/models/{model}:predictLongRunning     → {"name": "models/{model}/operations/{id}"}
    GET  /v1beta/models/{model}/operations/{id}        → the operation (done after `polls_before_done`)
    POST /v1beta/models/{model}:fetchPredictOperation  → the same, for Vertex AI's operations, named
         {"operationName": "projects/.../models/{model}/operations/{id}"}   "projects/..." (the vertex forms)
    GET  /v1beta/files/{id}:download?alt=media         → the MP4 (or a 302 to /blobs/{id})
    GET  /blobs/{id}                                   → the MP4

Knobs are plain attributes, set by a test and put back by `reset()`:

    form              "gemini"        response.generateVideoResponse.generatedSamples[0].video.uri
                      "vertex_bytes"  response.videos[0].bytesBase64Encoded + mimeType
                      "vertex_gcs"    response.videos[0].gcsUri (gs://...)
                      "empty"         done, with a response that holds no video and no reason
    polls_before_done how many polls answer done=false first (a huge number: never done)
    progress          metadata.progressPercent values for the unfinished polls, in order
    op_error          {"code": 14, "message": "..."}: the finished operation carries this error
    rai_reasons       the finished operation holds no video, raiMediaFilteredCount/Reasons instead
    fail_status       HTTP status for failing submits; fail_times how many (-1: all)
    poll_fail_status  HTTP status for failing polls; poll_fail_times how many (-1: all)
    hang              seconds the submit sleeps before answering
    download_redirect the download answers 302 to /blobs/{id} on `redirect_origin` (None: here)

Every request is recorded in `requests`; `video` holds the real MP4 every download serves.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import itertools
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from common.providers.base import VideoRequest
from common.providers.simulated_media import SimulatedVideoProvider
from tests.fakes.gemini_image_upstream import RecordedRequest, google_error, record

_GEMINI_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
_VERTEX_TYPE = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"


def make_mp4(seconds: int = 1, width: int = 64, height: int = 36) -> bytes:
    """A real MP4 from the simulated provider; runs its own event loop in a thread, so it works
    whether or not the caller is inside one."""
    request = VideoRequest(model="fake", prompt="fake veo clip", seconds=seconds, width=width, height=height)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, SimulatedVideoProvider().generate_video(request)).result().data


class FakeVeoUpstream:
    def __init__(self, video: bytes | None = None) -> None:
        self.video = video if video is not None else make_mp4()
        self.requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self.reset()
        self.app = Starlette(routes=[
            Route("/v1beta/models/{model}:predictLongRunning", self._submit, methods=["POST"]),
            Route("/v1beta/models/{model}/operations/{op}", self._poll, methods=["GET"]),
            Route("/v1beta/models/{model}:fetchPredictOperation", self._fetch_operation, methods=["POST"]),
            Route("/v1beta/files/{file}:download", self._download, methods=["GET"]),
            Route("/blobs/{file}", self._blob, methods=["GET"]),
        ])

    def reset(self) -> None:
        self.requests.clear()
        self.form = "gemini"
        self.polls_before_done = 0
        self.progress: list[float] = []
        self.op_error: dict[str, Any] | None = None
        self.rai_reasons: list[str] | None = None
        self.fail_status: int | None = None
        self.fail_times = 0
        self.poll_fail_status: int | None = None
        self.poll_fail_times = 0
        self.mime_type = "video/mp4"  # what vertex_bytes claims the bytes are
        self.hang = 0.0
        self.download_redirect = False
        self.redirect_origin: str | None = None
        self.submits = 0
        self.polls: dict[str, int] = {}
        self.poll_failures = 0
        self.download_fail_status: int | None = None
        self.download_fail_times = 0  # -1: every time
        self.download_failures = 0

    def requests_to(self, fragment: str) -> list[RecordedRequest]:
        return [r for r in self.requests if fragment in r.path]

    async def _submit(self, request: Request) -> Response:
        await record(request, self.requests)
        self.submits += 1
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.fail_status and (self.fail_times < 0 or self.submits <= self.fail_times):
            return google_error(self.fail_status, "fake submit failure")
        name = f"models/{request.path_params['model']}/operations/op{next(self._ids)}"
        if self.form.startswith("vertex"):
            name = f"projects/fake/locations/us-central1/publishers/google/{name}"
        self.polls[name] = 0
        return JSONResponse({"name": name})

    async def _poll(self, request: Request) -> Response:
        await record(request, self.requests)
        name = f"models/{request.path_params['model']}/operations/{request.path_params['op']}"
        return self._operation(request, name)

    async def _fetch_operation(self, request: Request) -> Response:
        await record(request, self.requests)
        name = str((await request.json()).get("operationName", ""))
        if not name.startswith("projects/"):
            return google_error(400, "operationName must be a Vertex AI operation")
        return self._operation(request, name)

    def _operation(self, request: Request, name: str) -> Response:
        if name not in self.polls:
            return google_error(404, f"Operation {name} not found")
        if self.poll_fail_status and (self.poll_fail_times < 0 or self.poll_failures < self.poll_fail_times):
            self.poll_failures += 1
            return google_error(self.poll_fail_status, "fake poll failure")
        seen = self.polls[name]
        self.polls[name] = seen + 1
        if seen < self.polls_before_done:
            operation: dict[str, Any] = {"name": name, "metadata": {"createTime": "2025-01-01T00:00:00Z"}}
            if seen < len(self.progress):
                operation["metadata"]["progressPercent"] = self.progress[seen]
            # json.dumps, not JSONResponse: a NaN or Infinity goes out as the bare token a sloppy upstream sends
            return Response(json.dumps(operation), media_type="application/json")
        return JSONResponse(self._finished(name, str(request.base_url).rstrip("/")))

    def _finished(self, name: str, origin: str) -> dict[str, Any]:
        operation: dict[str, Any] = {"name": name, "done": True}
        if self.op_error is not None:
            operation["error"] = self.op_error
            return operation
        vertex = self.form.startswith("vertex")
        if self.rai_reasons is not None:
            filtered = {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": self.rai_reasons}
            operation["response"] = {"@type": _VERTEX_TYPE, **filtered} if vertex else {
                "@type": _GEMINI_TYPE, "generateVideoResponse": filtered}
            return operation
        if self.form == "vertex_bytes":
            video = {"bytesBase64Encoded": base64.b64encode(self.video).decode(), "mimeType": self.mime_type}
            operation["response"] = {"@type": _VERTEX_TYPE, "raiMediaFilteredCount": 0, "videos": [video]}
        elif self.form == "vertex_gcs":
            video = {"gcsUri": "gs://fake-bucket/veo/sample_0.mp4", "mimeType": "video/mp4"}
            operation["response"] = {"@type": _VERTEX_TYPE, "raiMediaFilteredCount": 0, "videos": [video]}
        elif self.form == "empty":
            operation["response"] = {"@type": _GEMINI_TYPE, "generateVideoResponse": {}}
        else:
            uri = f"{origin}/v1beta/files/{name.rsplit('/', 1)[-1]}:download?alt=media"
            operation["response"] = {"@type": _GEMINI_TYPE,
                                     "generateVideoResponse": {"generatedSamples": [{"video": {"uri": uri}}]}}
        return operation

    async def _download(self, request: Request) -> Response:
        await record(request, self.requests)
        if self.download_fail_status and (self.download_fail_times < 0
                                          or self.download_failures < self.download_fail_times):
            self.download_failures += 1
            return google_error(self.download_fail_status, "fake download failure")
        if self.download_redirect:
            origin = self.redirect_origin or str(request.base_url).rstrip("/")
            return RedirectResponse(f"{origin}/blobs/{request.path_params['file']}", status_code=302)
        return Response(self.video, media_type="video/mp4")

    async def _blob(self, request: Request) -> Response:
        await record(request, self.requests)
        return Response(self.video, media_type="video/mp4")
