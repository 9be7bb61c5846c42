"""The OpenAI Videos API over vo3 jobs: create (multipart or JSON), list, retrieve, content, delete."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from api import job_flow
from api.deps import CallerDep, PrincipalDep, ServicesDep, caller_of, get_caller
from api.lean_route import LeanRoute, served_by
from api.request_body import json_or_form
from api.responses import json_response, stored_file_response
from api.schemas.media import VideoCreateRequest
from api.schemas.responses import VideoDeleted, VideoList, VideoView, doc, file_doc
from api.services import Services
from common import clock
from common.errors import Conflict, HelyxError, NotFound
from common.jobs.recovery import forget_files
from common.jobs.views import VIDEO_STATUS, JobRecord, mark_deleted, video_view

router = APIRouter(prefix="/api/v1", tags=["videos"], route_class=LeanRoute)
POLL_AFTER_MIN_MS, POLL_AFTER_MAX_MS = 200, 2000

_BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": VideoCreateRequest.model_json_schema()},
    "multipart/form-data": {"schema": VideoCreateRequest.model_json_schema()},
}}}


async def _parse(request: Request) -> VideoCreateRequest:
    data = await json_or_form(request)  # an uploaded file where text is due is refused by name below
    try:
        return VideoCreateRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _not_gone(record: JobRecord, video_id: str) -> None:
    if record.gone:
        raise NotFound(f"Video {video_id} was deleted or has expired.", code="video_not_found", param="id")


def _headers(services: Services, record: JobRecord, view: dict[str, Any]) -> dict[str, str]:
    """An unfinished video's `openai-poll-after-ms`, which the SDK's poller waits: a tenth of the
    time a video of its model usually takes, or half its age if more, from 200 ms to 2 s. A fast one
    (a simulated video takes 0.3 s) is seen done within a few tenths of a second; one that takes
    minutes (Veo) is polled every 2 s. The SDK reads the header of its first retrieve only, right
    after the create: that one must already know which kind of video it is (with the age alone it
    said 200 ms, and a Veo video was retrieved five times a second to its end)."""
    if view["status"] not in ("queued", "in_progress"):
        return {}
    age_ms = (clock.now().timestamp() - float(record.row["created_at"])) * 1000
    try:
        expected_ms = services.providers.expected_seconds(services.catalog.get(record.row["model"])) * 1000
    except HelyxError:  # a model the catalog no longer has: by its age alone
        expected_ms = 0.0
    wait = max(age_ms / 2, expected_ms / 10)
    return {"openai-poll-after-ms": str(int(min(POLL_AFTER_MAX_MS, max(POLL_AFTER_MIN_MS, wait))))}


@router.post("/videos", summary="Create a video (multipart/form-data or JSON)", openapi_extra=_BODY_DOC,
             responses=doc(VideoView, 401, 402, 403, 404, 409, 429, 503))
async def create_video(request: Request, principal: PrincipalDep, services: ServicesDep) -> Any:
    body = await _parse(request)  # a malformed request is refused before it is counted
    width, height = (int(x) for x in body.size.split("x"))
    job_flow.check_request(services, request, body.webhook_url)
    async with job_flow.counted(services, principal) as rate_headers:
        submitted = await job_flow.submit(
            services, principal, request, job_type="video", model=body.model, units=1,
            params={"prompt": body.prompt, "seconds": int(body.seconds), "width": width, "height": height},
            webhook_url=body.webhook_url,
        )
        job_id = submitted.job_id
        async with job_flow.answering(request, job_id, "video"):  # the job exists: a failure now must not be retried
            record, remaining = await job_flow.first_reading(services, principal, submitted)
            _not_gone(record, job_id)  # an Idempotency-Key's replay of a video deleted since: 404, as GET says
            view = video_view(record, remaining)
            headers = _headers(services, record, view)
    return json_response(view, headers={**headers, **rate_headers})


@router.get("/videos", summary="List videos", responses=doc(VideoList, 401, 404))
async def get_videos(
    principal: PrincipalDep, services: ServicesDep, limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(pattern=r"^job_[0-9a-f]+$",
                                       description="last_id of the previous page; another id is a 404")] = None,
    order: Literal["asc", "desc"] = "desc",
) -> Any:
    records, has_more, remaining = await job_flow.page(services, principal, job_type="video", limit=limit,
                                                       after=after, order=order, skip_gone=True)
    data = [video_view(r, remaining) for r in records]
    return json_response({"object": "list", "data": data, "has_more": has_more,
                          "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


async def _poll(request: Request) -> Response:
    """GET /videos/{video_id} without FastAPI's parameter and dependency solving (api.lean_route)."""
    return await get_video(request.path_params["video_id"], caller_of(request))


@router.get("/videos/{video_id}", summary="Retrieve a video; unfinished ones set openai-poll-after-ms",
            responses=doc(VideoView, 401, 404))
@served_by(lambda route: _poll, runs=(get_caller,))
async def get_video(video_id: str, caller: CallerDep) -> Any:
    record, remaining = await job_flow.read_as(caller, video_id, "video")
    _not_gone(record, video_id)
    view = video_view(record, remaining)
    return json_response(view, headers=_headers(caller.services, record, view))


@router.head("/videos/{video_id}/content", include_in_schema=False)  # HEAD undocumented: one operationId
@router.get("/videos/{video_id}/content", summary="Download the MP4",
            responses=file_doc("video/mp4"), response_class=StreamingResponse)
async def get_video_content(
    video_id: str, request: Request, principal: PrincipalDep, services: ServicesDep,
    variant: Literal["video", "thumbnail", "spritesheet"] = "video",
) -> Response:
    record, _ = await job_flow.read(services, principal, video_id, "video")
    _not_gone(record, video_id)  # deleted or expired: say so, not "not ready yet"
    status = record.row["status"]
    if status in ("failed", "canceled"):  # never "not ready yet": it will never have any
        code = record.row["error_code"]
        ended = "was canceled" if status == "canceled" else f"failed ({code})" if code else "failed"
        raise NotFound(f"Video {video_id} has no content: it {ended}.", code="video_failed", param="id")
    if status != "succeeded" or not record.files:
        raise NotFound(f"Video {video_id} has no content yet (status {VIDEO_STATUS[status]}).", code="video_not_ready",
                       param="id")
    if variant != "video":
        raise NotFound(f"No {variant} for video {video_id}; only the video itself is stored.", param="variant",
                       code="variant_not_available")
    stored = record.files[0]
    return stored_file_response(services.storage, stored,
                                {"content-disposition": f'attachment; filename="{video_id}.mp4"'}, request)


@router.delete("/videos/{video_id}", summary="Delete a video (an unfinished one is canceled and refunded)",
               responses=doc(VideoDeleted, 401, 404))
async def delete_video(video_id: str, principal: PrincipalDep, services: ServicesDep) -> Any:
    record, _ = await job_flow.read(services, principal, video_id, "video")
    _not_gone(record, video_id)
    canceled_now = False
    if record.row["status"] in ("queued", "running"):
        try:  # refunded here, once: the cancel is conditional on the job being unfinished
            canceled_now = await job_flow.cancel(services, principal, video_id)
        except Conflict:  # it finished meanwhile: read its files again, to delete them below
            record, _ = await job_flow.read(services, principal, video_id, "video")

    def forget() -> None:
        for stored in record.files:
            services.storage.delete(stored["storage_key"])
        forget_files(services.engine, [f["id"] for f in record.files])
        mark_deleted(services.engine, principal.account_id, video_id)  # a failed or canceled one

    await run_in_threadpool(forget)
    if canceled_now and record.row["webhook_url"]:  # as POST /jobs/{id}/cancel sends it (not the sweeper, later)
        await job_flow.notify(services, video_id)
    return json_response({"id": video_id, "object": "video.deleted", "deleted": True})
