"""The caller's own account: credits, usage, keys."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, ServicesDep
from api.responses import json_response
from api.schemas.keys import KeyCreate, key_created
from api.schemas.responses import CreditsView, KeyCreated, KeyList, KeyRevoked, UsagePage, doc
from common import accounts, billing, clock, reports
from common.errors import InvalidRequest

router = APIRouter(prefix="/api/v1", tags=["account"])


@router.get("/credits", summary="Plan, allowance, used today, remaining, top-up balance, next reset",
            responses=doc(CreditsView, 401))
async def get_credits(principal: PrincipalDep, services: ServicesDep) -> Any:
    summary = await run_in_threadpool(
        reports.credits_summary, services.engine, principal.account_id, services.settings.timezone
    )
    return json_response(summary)


@router.get("/usage", summary="The account's ledger, newest first, paginated",
            responses=doc(UsagePage, 401, 404))
async def get_usage(
    principal: PrincipalDep,
    services: ServicesDep,
    key_id: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11, allow_inf_nan=False,
                                         description="unix seconds, inclusive")] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11, allow_inf_nan=False,
                                         description="unix seconds, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=reports.MAX_PAGE)] = 50,
    after: Annotated[int | None, Query(ge=0, le=2**62, description="next_cursor of the previous page")] = None,
    cursor: Annotated[int | None, Query(ge=0, le=2**62, include_in_schema=False)] = None,
) -> Any:
    # The page names its cursor `next_cursor`, so `cursor=` is what a caller tries first; ignored,
    # it would restart at the newest entry and a client paging on would loop. Accepted, undocumented.
    if cursor is not None and after is not None and cursor != after:
        raise InvalidRequest("after and cursor are one parameter and these disagree: give one.", param="cursor")
    after = after if after is not None else cursor
    page = await run_in_threadpool(
        lambda: reports.list_usage(services.engine, principal.account_id, key_id=key_id, since=since,
                                   until=until, limit=limit, after=after)
    )
    return json_response(page)


@router.get("/keys", summary="The account's API keys (never their secrets), oldest first",
            responses=doc(KeyList, 401, 404))
async def list_keys(
    principal: PrincipalDep, services: ServicesDep, limit: Annotated[int, Query(ge=1, le=100)] = 100,
    after: Annotated[str | None, Query(min_length=1, max_length=100, description="last_id of the previous page")
                     ] = None,
) -> Any:
    today = billing.today(services.settings.timezone)
    return json_response(await run_in_threadpool(
        lambda: reports.list_keys(services.engine, principal.account_id, today=today, limit=limit, after=after)))


@router.post("/keys", status_code=201, summary="Create a key; its secret is shown only in this response",
             responses=doc(KeyCreated, 401, 409, status=201))
async def create_key(principal: PrincipalDep, services: ServicesDep,
                     body: Annotated[KeyCreate | None, Body()] = None) -> Any:
    body = body or KeyCreate()  # every field is optional: so is the body
    key = await run_in_threadpool(body.create, services.engine, principal.account_id, count_recent=True)
    return json_response(key_created(key), status=201)


@router.delete("/keys/{key_id}", summary="Revoke a key; it fails on the very next request",
               responses=doc(KeyRevoked, 401, 404))
async def revoke_key(key_id: str, principal: PrincipalDep, services: ServicesDep) -> Any:
    def revoke() -> None:
        with services.engine.begin() as conn:
            accounts.revoke_key(conn, key_id, now=clock.now().timestamp(), account_id=principal.account_id)

    await run_in_threadpool(revoke)
    return json_response({"id": key_id, "object": "api_key", "revoked": True})
