"""GET /api/v1/jobs, GET /api/v1/jobs/{id}, POST /api/v1/jobs/{id}/cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from api import job_flow
from api.deps import CallerDep, PrincipalDep, ServicesDep, caller_of, get_caller
from api.lean_route import LeanRoute, served_by
from api.responses import json_response
from api.schemas.responses import JobList, JobView, doc
from common.jobs.views import job_view

router = APIRouter(prefix="/api/v1", tags=["jobs"], route_class=LeanRoute)


@router.get("/jobs", summary="The account's media jobs, newest first (or oldest first)",
            responses=doc(JobList, 401, 404))
async def get_jobs(
    request: Request, principal: PrincipalDep, services: ServicesDep,
    type: Literal["image", "video"] | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(pattern=r"^job_[0-9a-f]+$", description="last_id of the previous page")] = None,
    status: Literal["queued", "running", "succeeded", "failed", "canceled"] | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> Any:
    records, has_more, remaining = await job_flow.page(services, principal, job_type=type, limit=limit, after=after,
                                                       status=status, order=order)
    links = job_flow.linker(services, request)
    data = [job_view(r, links, remaining) for r in records]
    return json_response({"object": "list", "data": data, "has_more": has_more,
                          "last_id": data[-1]["id"] if data else None})


async def _poll(request: Request) -> Response:
    """GET /jobs/{job_id} without FastAPI's parameter and dependency solving (api.lean_route)."""
    return await get_job(request.path_params["job_id"], request, caller_of(request))


@router.get("/jobs/{job_id}", summary="One job: status, progress, result files, error",
            responses=doc(JobView, 401, 404))
@served_by(lambda route: _poll, runs=(get_caller,))
async def get_job(job_id: str, request: Request, caller: CallerDep) -> Any:
    record, remaining = await job_flow.read_as(caller, job_id)
    return json_response(job_view(record, job_flow.linker(caller.services, request), remaining))


@router.post("/jobs/{job_id}/cancel", summary="Cancel an unfinished job: full refund",
             responses=doc(JobView, 401, 404, 409))
async def cancel_job(job_id: str, request: Request, principal: PrincipalDep, services: ServicesDep) -> Any:
    canceled_now = await job_flow.cancel(services, principal, job_id)
    record, remaining = await job_flow.read(services, principal, job_id)
    if canceled_now and record.row["webhook_url"]:  # once: a repeated cancel queued a delivery each time
        await job_flow.notify(services, job_id)
    return json_response(job_view(record, job_flow.linker(services, request), remaining))
