"""POST /api/v1/images/generations: an image job, answered when done (or 202 at once)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api import job_flow
from api.deps import PrincipalDep, ServicesDep
from api.responses import json_response
from api.schemas.media import ImageGenerationRequest, parse_size
from api.schemas.responses import ImagesResponse, JobView, doc
from api.services import Services
from common.accounts import Principal
from common.errors import Conflict, InvalidRequest, UpstreamError
from common.jobs.submit import Submission
from common.jobs.views import JobRecord, images_response, job_view

router = APIRouter(prefix="/api/v1", tags=["images"])
CLIENT_MENDABLE = ("content_filtered",)  # a failed job's codes that are a 400: the provider refused the prompt
_IMAGE_RESPONSES = {**doc(ImagesResponse, 401, 402, 403, 404, 409, 429, 502, 503),
                    202: {"model": JobView, "description": "Accepted: the job, still running"}}


@router.post("/images/generations", summary="Generate images (waits; `Prefer: respond-async` answers 202 at once)",
             responses=_IMAGE_RESPONSES)
async def generate_images(body: ImageGenerationRequest, request: Request, principal: PrincipalDep,
                          services: ServicesDep) -> Any:
    job_flow.check_request(services, request, body.webhook_url)  # a refusal here is not counted
    async with job_flow.counted(services, principal) as rate_headers:
        response = await _generate(body, request, principal, services, rate_headers)
    response.headers.update(rate_headers)
    return response


async def _generate(body: ImageGenerationRequest, request: Request, principal: Principal,
                    services: Services, rate_headers: dict[str, str]) -> Response:
    width, height = parse_size(body.size)
    submitted = await job_flow.submit(
        services, principal, request, job_type="image", model=body.model, units=body.n,
        params={"prompt": body.prompt, "n": body.n, "width": width, "height": height,
                "response_format": body.response_format},
        webhook_url=body.webhook_url,
    )
    async with job_flow.answering(request, submitted.job_id, "image"):  # the job exists: a failure must not be retried
        return await _answer(body, request, principal, services, rate_headers, submitted)


async def _answer(body: ImageGenerationRequest, request: Request, principal: Principal, services: Services,
                  rate_headers: dict[str, str], submitted: Submission) -> Response:
    """The job as made: 202 at once (Prefer: respond-async), else its images once it is done."""
    links = job_flow.linker(services, request)
    job_id = submitted.job_id
    if prefers_async(request):
        record, remaining = await job_flow.first_reading(services, principal, submitted)
        return json_response(job_view(record, links, remaining), status=202)
    last: dict[str, tuple[JobRecord, int]] = {}  # the job as last read: a 202 with it if the shutdown cuts the wait

    def seen(record: JobRecord, remaining: int) -> None:
        last["job"] = (record, remaining)

    cut_before_a_reading = request.state.answer_if_cut  # job_flow.answering's

    def answer_if_cut() -> Response | None:  # api.middleware.answer_cut_request
        if not last:
            return cut_before_a_reading()
        return json_response(job_view(last["job"][0], links, last["job"][1]), status=202, headers=rate_headers)

    request.state.answer_if_cut = answer_if_cut
    record, remaining = await job_flow.wait_for(services, principal, job_id, services.settings.image_wait_seconds,
                                                seen)
    status = record.row["status"]
    if status == "succeeded":
        return json_response(await run_in_threadpool(
            images_response, record, links, services.storage, body.response_format, remaining))
    if status == "canceled":  # by the user (meanwhile, or before an Idempotency-Key replay): not for the SDK to retry
        raise Conflict(f"The image job {job_id} was canceled (POST /jobs/{{id}}/cancel); it was refunded.",
                       code="job_canceled")
    if status == "failed":
        message = f"The image job {job_id} failed and was refunded: {record.row['error_message']}"
        if record.row["error_code"] in CLIENT_MENDABLE:  # the prompt's to change, as OpenAI answers it
            raise InvalidRequest(message, code=record.row["error_code"], param="prompt")
        raise UpstreamError(message, code=record.row["error_code"] or "upstream_error")
    return json_response(job_view(record, links, remaining), status=202)  # still running: poll /jobs/{id}


def prefers_async(request: Request) -> bool:
    """RFC 7240: `Prefer` is a comma-separated list of preferences, each a name with an optional
    `=value` and `;` parameters, over any number of headers; `respond-async` is one such name
    (a substring such as `no-respond-async` is not it)."""
    for header in request.headers.getlist("prefer"):
        for preference in header.split(","):
            if preference.split(";")[0].split("=")[0].strip().lower() == "respond-async":
                return True
    return False
