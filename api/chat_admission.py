"""How a chat request gets in: its key checked, its rate counted, its credits held (SPEC §3).

In turn, the general path: the key lookup, then the rate-limit hit, then (api.chat_flow) the
reservation: three round trips before the upstream call.

At once, on PostgreSQL, for a key this process has let in before (api.recent_keys): the
rate-limit hit goes first, under the key id and plan remembered from the key's last request; then
the key lookup and the reservation go out as one statement (common.admit_pg). Two round trips
before the upstream call instead of three (what that measured: README, Performance). The key is
still looked up on every request (a revoked key fails at once), the rate is
still counted before anything is held (a refused request holds nothing, as in turn), and every
refusal is the one the path in turn gives, but for these: a plan change reaches the rate limit from
the key's next request on; a revoked key whose rate limit is spent, or whose rate limit cannot be
counted (Redis away), gets one 429 or 503 before its 401s (a refused key is forgotten, so its next
request goes in turn); and a request the database then fails (503) has used a rate-limit slot.

Whatever the statement could not decide (a capped key, a daily reset due, a balance short of the
whole hold, a plan that may not use the model) it leaves alone, writing nothing; the caller then
goes on as in turn, from the principal the statement read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import anyio
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api.deps import after_lookup, authenticate, bearer
from api.schemas.chat import ChatCompletionRequest
from api.services import Services
from common import admit_pg, billing, clock, keys
from common.accounts import Principal, principal_from_row
from common.catalog import ModelEntry
from common.chat_billing import Reservation
from common.errors import AuthenticationFailed, HelyxError, InvalidRequest
from common.providers.base import ChatProvider


@dataclass(frozen=True, slots=True)
class Admission:
    principal: Principal
    rate_headers: dict[str, str]
    reservation: Reservation | None  # None: nothing held yet (api.chat_flow reserves in turn)
    tried_at_once: bool = False  # the one statement ran and could not hold: one-statement reserving would not either


async def admit(services: Services, request: Request, body: ChatCompletionRequest, messages: list[dict[str, Any]],
                *, prompt_estimate: int, purpose: str) -> Admission:
    """The caller's principal and rate-limit headers, and the hold when it could be made at once.
    401, 400 (the message limits) and 429 come from here, in that order."""
    settings = services.settings
    token = bearer(request)
    fast = _at_once_plan(services, token, body, messages, prompt_estimate)
    if fast is not None:
        return await _at_once(services, request, fast, purpose)
    principal = await authenticate(request, services)
    check_limits(messages, settings.max_messages, settings.max_message_chars)
    decision = await services.limiter.hit(principal.key_id, principal.plan)
    if token is not None:
        services.recent_keys.remember(keys.hash_key(token), principal.account_id, principal.key_id, principal.plan)
    return Admission(principal, decision.headers(), None)


@dataclass(frozen=True, slots=True)
class _AtOnce:
    key_hash: str
    key_prefix: str
    account_id: str
    key_id: str
    plan: str  # as last seen: the rate limit it is counted under
    entry: ModelEntry
    max_tokens: int
    prompt_estimate: int


def servable_by(services: Services, entry: ModelEntry, body: ChatCompletionRequest,
                messages: list[dict[str, Any]]) -> ChatProvider:
    """The provider that serves the request, once the checks of it against the model and that
    provider have passed (no I/O): a field, an image part or a conversation they refuse is a 400
    of ours before anything is held, not the vendor's error after the hold. A provider that cannot
    be built holds nothing either. Both paths run these, in the same order."""
    entry.refuse_unsupported(body.given)
    entry.refuse_images(messages)
    entry.refuse_final_assistant_turn(messages)
    provider = services.providers.chat(entry)
    # cast: the field's type is what the client may send; its validator (_stop) makes a lone string a list.
    provider.refuse_unsendable(messages, entry.upstream_stop(cast("list[str] | None", body.stop)), body.sent_tools)
    if body.sent_response_format is not None and not provider.json_output:
        raise InvalidRequest(f"The model '{entry.id}' cannot be asked for JSON answers; leave response_format out "
                             "(or ask for JSON in the prompt).", param="response_format", code="unsupported_parameter")
    return provider


def _at_once_plan(services: Services, token: str | None, body: ChatCompletionRequest,
                  messages: list[dict[str, Any]], prompt_estimate: int) -> _AtOnce | None:
    """What the at-once path needs, or None when it does not apply. No I/O: whatever would be an
    error here is left to the path in turn, which raises it in the usual order."""
    if services.pg is None or token is None or not keys.is_well_formed(token):
        return None
    key_hash = keys.hash_key(token)
    recent = services.recent_keys.get(key_hash)
    if recent is None:
        return None
    settings = services.settings
    try:
        check_limits(messages, settings.max_messages, settings.max_message_chars)
        entry = services.catalog.usable(body.model, settings, kind="chat")
        servable_by(services, entry, body, messages)
    except HelyxError:
        return None
    wanted = body.requested_max_tokens if body.requested_max_tokens is not None else settings.default_max_tokens
    return _AtOnce(key_hash, keys.display_prefix(token), recent.account_id, recent.key_id, recent.plan, entry,
                   wanted, prompt_estimate)


async def _at_once(services: Services, request: Request, fast: _AtOnce, purpose: str) -> Admission:
    assert services.pg is not None
    settings = services.settings
    fields = getattr(request.state, "log", None)
    if fields is not None:  # a refusal's log line names the caller, as after a lookup
        fields.update(account_id=fast.account_id, key_prefix=fast.key_prefix)
    try:
        decision = await services.limiter.hit(fast.key_id, fast.plan)  # 429 or 503: nothing looked up or held
    except HelyxError:
        services.recent_keys.forget(fast.key_hash)
        raise
    now = clock.now().timestamp()
    amount = (fast.prompt_estimate + fast.max_tokens) * fast.entry.rate_micro
    async with services.pg.connection() as conn:
        admitted = await admit_pg.authenticate_and_reserve(
            conn, key_hash=fast.key_hash, plans=services.catalog.plans_for(fast.entry),
            day=billing.today(settings.timezone), amount=amount, purpose=purpose, now=now,
            ttl=settings.hold_ttl_seconds,
        )
    try:
        principal = principal_from_row(admitted.key_row, now)
    except AuthenticationFailed:
        services.recent_keys.forget(fast.key_hash)  # (nothing held: the statement holds only for a valid key)
        raise
    services.recent_keys.remember(fast.key_hash, principal.account_id, principal.key_id, principal.plan)
    try:
        await after_lookup(request, services, principal, now)  # (a daily reset due: nothing was held)
    except BaseException:
        if admitted.hold_id is not None:  # the key's last use could not be recorded: a 500, nothing held
            await release(services, admitted.hold_id)
        raise
    if admitted.hold_id is None:
        return Admission(principal, decision.headers(), None, tried_at_once=True)
    held = Reservation(admitted.hold_id, fast.max_tokens, fast.prompt_estimate)
    return Admission(principal, decision.headers(), held)


async def release(services: Services, hold_id: str) -> None:
    """Release a hold made at once for a request that fails before its call is set up (the key's
    last use could not be recorded; or, never expected, a check the chat flow repeats). Nothing
    is charged. A rare path: billing.release in the thread pool."""
    with anyio.CancelScope(shield=True):
        await run_in_threadpool(billing.release, services.engine, hold_id)


def check_limits(messages: list[dict[str, Any]], max_messages: int, max_chars: int) -> None:
    if len(messages) > max_messages:
        raise InvalidRequest(f"At most {max_messages} messages per request.", param="messages")
    for index, message in enumerate(messages):
        content = message.get("content")
        size = len(content) if isinstance(content, str) else sum(len(str(p)) for p in content or [])
        if size > max_chars:
            raise InvalidRequest(f"Message {index} is longer than {max_chars} characters.",
                                 param=f"messages.{index}.content")
