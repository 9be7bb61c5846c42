"""Operator routes behind HELYX_ADMIN_TOKEN: accounts, plans, credit grants, keys."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from api.deps import ServicesDep, require_admin
from api.responses import json_response
from api.schemas.base import OwnBody
from api.schemas.credits import CreditAmount, micro_of
from api.schemas.keys import AdminKeyCreate, key_created
from api.schemas.responses import (
    AccountCreated,
    AccountList,
    CreditsView,
    GrantResult,
    KeyCreated,
    KeyRevoked,
    doc,
)
from common import accounts, billing, clock, ledger, reports
from common.errors import InvalidRequest
from common.plans import PLANS

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

Plan = Annotated[str, Field(pattern="^(" + "|".join(PLANS) + ")$")]


class AccountCreate(OwnBody):
    email: str = Field(min_length=3, max_length=accounts.MAX_EMAIL_CHARS)
    plan: Plan = "free"


class PlanSet(OwnBody):
    plan: Plan


class CreditGrant(OwnBody):
    amount: CreditAmount = Field(description="credits, up to 6 decimals")
    reference: str | None = Field(default=None, max_length=ledger.MAX_REFERENCE_CHARS,
                                     description="makes the grant idempotent")


@router.post("/accounts", status_code=201, summary="Create an account with a first API key",
             responses=doc(AccountCreated, 401, 404, 409, status=201))
async def create_account(body: AccountCreate, services: ServicesDep) -> Any:
    def create() -> tuple[str, accounts.NewKey]:
        with services.engine.begin() as conn:
            return accounts.create_account(conn, body.email, body.plan,
                                           day=billing.today(services.settings.timezone),
                                           now=clock.now().timestamp())

    account_id, key = await run_in_threadpool(create)
    return json_response({"account_id": account_id, "api_key": key.secret, "key_id": key.id, "plan": body.plan},
                         status=201)


@router.get("/accounts", summary="List accounts", responses=doc(AccountList, 401, 404))
async def list_accounts(
    services: ServicesDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(min_length=1, max_length=100,  # empty: a 400, never the first page again
                                       description="next_cursor of the previous page")] = None,
) -> Any:
    return json_response(await run_in_threadpool(reports.list_accounts, services.engine, services.settings.timezone,
                                                 limit=limit, after=after))


@router.post("/accounts/{account_id}/plan", summary="Change an account's plan now",
             responses=doc(CreditsView, 401, 404))
async def set_plan(account_id: str, body: PlanSet, services: ServicesDep) -> Any:
    def change() -> None:
        with services.engine.begin() as conn:
            ledger.change_plan(conn, account_id, body.plan, billing.today(services.settings.timezone),
                               now=clock.now().timestamp())

    await run_in_threadpool(change)
    return json_response(await run_in_threadpool(reports.credits_summary, services.engine, account_id,
                                                 services.settings.timezone))


@router.post("/accounts/{account_id}/credits", summary="Grant top-up credits",
             responses=doc(GrantResult, 400, 401, 404, 409))
async def grant_credits(account_id: str, body: CreditGrant, services: ServicesDep,
                        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> Any:
    """`Idempotency-Key` is the grant's reference when the body names none: an operator's script
    that sends the grant again after a lost answer (a timeout, a dropped connection) grants once."""
    reference = _grant_reference(body.reference, idempotency_key)

    def grant() -> bool:
        with services.engine.begin() as conn:
            return ledger.grant(conn, account_id, micro_of(body.amount), now=clock.now().timestamp(),
                                reference=reference)

    applied = await run_in_threadpool(grant)
    summary = await run_in_threadpool(reports.credits_summary, services.engine, account_id, services.settings.timezone)
    return json_response({**summary, "granted": applied})


def _grant_reference(in_body: str | None, header: str | None) -> str | None:
    if header is None:
        return in_body
    if not ledger.usable_reference(header):  # its own param, or the 400 would name the body's field
        raise InvalidRequest(f"Idempotency-Key must be 1 to {ledger.MAX_REFERENCE_CHARS} characters, not blank.",
                             param="Idempotency-Key")
    if in_body is not None and in_body != header:
        raise InvalidRequest("The body's reference and the Idempotency-Key header name two different grants; "
                             "send one of them, or the same value in both.", param="Idempotency-Key")
    return header


@router.post("/accounts/{account_id}/keys", status_code=201,
             summary="Create a key for an account; its secret is shown only in this response",
             responses=doc(KeyCreated, 401, 404, 409, status=201))
async def create_key(account_id: str, services: ServicesDep,
                     body: Annotated[AdminKeyCreate | None, Body()] = None) -> Any:
    """As the account's own POST /api/v1/keys, for an account that has lost or revoked its every
    key. Only the active keys count towards the account's limit (as with `helyx key create`)."""
    body = body or AdminKeyCreate()
    key = await run_in_threadpool(body.create, services.engine, account_id, count_recent=False)
    return json_response(key_created(key), status=201)


@router.delete("/keys/{key_id}", summary="Revoke any account's key; it fails on its very next request",
               responses=doc(KeyRevoked, 401, 404))
async def revoke_key(key_id: str, services: ServicesDep) -> Any:
    def revoke() -> None:
        with services.engine.begin() as conn:
            accounts.revoke_key(conn, key_id, now=clock.now().timestamp())

    await run_in_threadpool(revoke)
    return json_response({"id": key_id, "object": "api_key", "revoked": True})
