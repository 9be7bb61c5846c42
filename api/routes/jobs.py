"""GET /api/v1/jobs, GET /api/v1/jobs/{id}, POST /api/v1/jobs/{id}/cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from api import job_flow
from api.deps import CallerDep, PrincipalDep, ServicesDep
from api.responses import json_response
from api.schemas.responses import JobList, JobView, doc
from common.errors import InvalidRequest, NotFound
from common.jobs.lifecycle import cancel
from common.jobs.views import JobRecord, job_view, list_jobs, load_job

router = APIRouter(prefix="/api/v1", tags=["jobs"])


@router.get("/jobs", summary="The account's media jobs, newest first", responses=doc(JobList, 401, 404))
async def get_jobs(
    request: Request, principal: PrincipalDep, services: ServicesDep,
    type: Literal["image", "video"] | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(pattern=r"^job_[0-9a-f]+$", description="last_id of the previous page")] = None,
    status: Annotated[str | None, Query(include_in_schema=False)] = None,  # not a filter: refused, never ignored
) -> Any:
    if status is not None:  # a filter we ignored would answer a question the caller did not ask
        raise InvalidRequest("Jobs cannot be filtered by status; filter by type, or read each job's status.",
                             param="status", code="unsupported_parameter")

    def page() -> tuple[list[JobRecord], bool]:
        if after is not None:
            _check_cursor(services.engine, principal.account_id, after)
        return list_jobs(services.engine, principal.account_id, job_type=type, limit=limit, after=after)

    records, has_more = await run_in_threadpool(page)
    links = job_flow.linker(services, request)
    data = [job_view(r, links) for r in records]
    return json_response({"object": "list", "data": data, "has_more": has_more,
                          "last_id": data[-1]["id"] if data else None})


def _check_cursor(engine: Engine, account_id: str, after: str) -> None:
    """`after` must be one of the caller's jobs: list_jobs would ignore any other id and start
    again from the newest, so a client paging on would loop. An unknown id and another account's
    get the same 404 (SPEC §2), which says nothing about whether the id exists."""
    try:
        load_job(engine, account_id, after)
    except NotFound:
        raise NotFound(f"No job with id {after} to list after (give the last_id of the previous page).",
                       param="after", code="job_not_found") from None


@router.get("/jobs/{job_id}", summary="One job: status, progress, result files, error",
            responses=doc(JobView, 401, 404))
async def get_job(job_id: str, request: Request, caller: CallerDep) -> Any:
    record, remaining = await job_flow.read_as(caller, job_id)
    return json_response(job_view(record, job_flow.linker(caller.services, request), remaining))


@router.post("/jobs/{job_id}/cancel", summary="Cancel an unfinished job: full refund",
             responses=doc(JobView, 401, 404, 409))
async def cancel_job(job_id: str, request: Request, principal: PrincipalDep, services: ServicesDep) -> Any:
    await run_in_threadpool(cancel, services.engine, principal.account_id, job_id)
    record, remaining = await job_flow.read(services, principal, job_id)
    if record.row["webhook_url"]:
        await job_flow.notify(services, job_id)
    return json_response(job_view(record, job_flow.linker(services, request), remaining))
