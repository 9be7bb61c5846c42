"""Pricing a chat request before the call and settling it after (SPEC §3).

Before: hold `(prompt estimate + max_tokens) × rate`, where the prompt estimate is an upper
bound (common.tokens). When the caller did not set max_tokens and the balance cannot cover the
default, max_tokens shrinks to what the balance affords; when even one completion token cannot
be covered, or the caller's own max_tokens cannot, the answer is 402 saying how many tokens the
balance affords.

After: charge `(prompt_tokens + completion_tokens) × rate` from the provider's usage (the
ledger never charges more than the hold) and record the generation in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from common import billing, clock, credit_refusals, ledger, ledger_pg, pg_statements
from common.accounts import Principal
from common.catalog import ModelEntry
from common.db import is_postgres
from common.errors import InsufficientCredits
from common.money import credits_text, to_credits
from common.pg_async import AsyncStatements
from common.providers.base import Usage
from common.tokens import estimate_completion_tokens, estimate_used_prompt_tokens

_INSERT_GENERATION = text(
    "INSERT INTO generations (id, account_id, key_id, model, stream, status, prompt_tokens, completion_tokens,"
    " credits, usage_estimated, latency_ms, error_code, created_at) VALUES (:gid, :aid, :gkid, :model, :stream,"
    " :gstatus, :pt, :ct, :credits, :est, :lat, :err, :created) ON CONFLICT (id) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class Reservation:
    hold_id: str
    max_tokens: int
    prompt_estimate: int


@dataclass(slots=True)
class Outcome:
    """How a call ended, for settlement and the generation record."""

    generation_id: str
    status: str  # succeeded | failed | interrupted (failed after its first chunk) | cancelled (client left)
    usage: Usage | None
    usage_estimated: bool = False
    error_code: str | None = None

    @property
    def costs_nothing(self) -> bool:
        """The upstream failed, before its first byte or after: SPEC §3, a failed call costs nothing."""
        return self.status in ("failed", "interrupted")


def reserve_chat(
    engine: Engine, principal: Principal, entry: ModelEntry, *, prompt_estimate: int, max_tokens: int | None,
    default_max_tokens: int, purpose: str, ttl: float, tz: str, max_tokens_field: str = "max_tokens",
) -> Reservation:
    """Hold credits for the call; shrinks an unset max_tokens to what the balance affords. A 402
    names the limit as the caller did (`max_tokens_field`)."""
    wanted = max_tokens if max_tokens is not None else default_max_tokens
    capped = principal.daily_cap is not None

    def hold(tokens: int) -> str:
        return billing.reserve(
            engine, account_id=principal.account_id, key_id=principal.key_id,
            amount=(prompt_estimate + tokens) * entry.rate_micro, purpose=purpose, ttl=ttl, tz=tz, capped=capped,
        )

    tokens = wanted
    for _ in range(_SHRINK_TRIES):
        try:
            return Reservation(hold(tokens), tokens, prompt_estimate)
        except InsufficientCredits as exc:
            refusal = exc
            account = billing.balance(engine, principal.account_id)
            room, what, held = account.available, "The balance", credit_refusals.held_note(account)
            cap_left = billing.key_cap_left(engine, principal.key_id, tz) if capped else None
            if cap_left is not None and cap_left < room:
                room, what, held = cap_left, "This key's daily credit cap", ""
            # never more than wanted: holds released since the first try may have made room for all of it
            affordable = min(wanted, room // entry.rate_micro - prompt_estimate)
            if affordable < 1:
                break
            if max_tokens is not None and affordable < max_tokens:
                raise _explain(exc, what, affordable, max_tokens, max_tokens_field) from None
            tokens = affordable  # another request of the account may take this room first: look again
    else:
        # Each try was refused, yet the room read after it would have taken it: other requests of the
        # account held and released meanwhile. What the last try was told was true when it was told.
        raise billing.with_reset_time(InsufficientCredits(
            f"{refusal.message} Other requests of this account are holding credits at the same moment; try again.",
            code=refusal.code), tz) from None
    # What the smallest answer needs, not the hold of the max_tokens asked for (or of the default's):
    # a smaller limit would not help, the prompt is what does not fit.
    need = (prompt_estimate + 1) * entry.rate_micro
    raise billing.with_reset_time(InsufficientCredits(
        f"{what} cannot cover this prompt (up to {prompt_estimate} tokens) and one token of answer: that "
        f"needs {credits_text(need)} credits, and {credits_text(max(0, room))} are available{held}.", code=refusal.code,
        param="messages"), tz) from None


_SHRINK_TRIES = 3


def _explain(exc: InsufficientCredits, what: str, affordable: int, asked: int, field: str) -> InsufficientCredits:
    detail = f"{what} affords at most {field}={affordable} for this prompt, not {asked}."
    return InsufficientCredits(f"{detail} {exc.message}", code=exc.code, param=field)


def estimated_usage(messages: list[dict[str, Any]], produced: str, provider: object = None,
                    tools: list[dict[str, Any]] | None = None) -> Usage:
    """Usage for a call whose upstream reported none, or none to trust (a cut stream, a negative
    or fractional count): the provider's own count where it can make one offline (the simulated
    provider), else common.tokens' estimate of the prompt, its images included, and of the text
    produced so far; bounded later by the hold."""
    usage_of = getattr(provider, "usage_of", None)
    if usage_of is not None:
        return usage_of(messages, produced, tools)
    used = estimate_used_prompt_tokens(messages, tools, reasoning=getattr(provider, "replays_reasoning", False))
    return Usage(used, estimate_completion_tokens(produced) if produced else 0)


async def reserve_chat_async(
    pg: AsyncStatements, principal: Principal, entry: ModelEntry, *, prompt_estimate: int, max_tokens: int | None,
    default_max_tokens: int, purpose: str, ttl: float,
) -> Reservation | None:
    """The common case on the API's event loop: an uncapped key whose balance covers the whole
    hold, in one statement. None when that does not apply (a capped key) or the balance falls
    short; reserve_chat then decides (a smaller max_tokens, or 402)."""
    if principal.daily_cap is not None:
        return None
    wanted = max_tokens if max_tokens is not None else default_max_tokens
    async with pg.connection() as conn:
        hold_id = await ledger_pg.reserve_async(
            conn, account_id=principal.account_id, key_id=principal.key_id,
            amount=(prompt_estimate + wanted) * entry.rate_micro, purpose=purpose, now=clock.now().timestamp(), ttl=ttl,
        )
    return None if hold_id is None else Reservation(hold_id, wanted, prompt_estimate)


def finish_chat(
    engine: Engine, principal: Principal, entry: ModelEntry, reservation: Reservation, outcome: Outcome, *,
    stream: bool, started: float, day: str | None = None,
) -> ledger.Settlement:
    """Settle (or release) the hold and record the generation, in one transaction. `day` is today's
    billing day: an allowance still an earlier day's is reset before it is charged (ledger.settle)."""
    usage, charge, now = outcome.usage, _charge(entry, outcome), clock.now().timestamp()
    generation = _generation(principal, entry, outcome, stream, started, now)
    if is_postgres(engine):  # one statement in the common case (common.ledger_pg)
        with pg_statements.connection(engine) as pg:
            settled = ledger_pg.resolve(pg, reservation.hold_id, charge, now=now,
                                        description=_description(entry, usage) if charge else "",
                                        generation=generation, day=day)
        if settled is not None:
            return settled
    with engine.begin() as conn:
        if charge:
            settlement = ledger.settle(conn, reservation.hold_id, charge, now=now,
                                       description=_description(entry, usage), day=day)
        else:
            settlement = ledger.release(conn, reservation.hold_id, now=now)
        conn.execute(_INSERT_GENERATION, {**generation, "aid": principal.account_id, "credits": settlement.charged})
    return settlement


async def finish_chat_async(
    pg: AsyncStatements, principal: Principal, entry: ModelEntry, reservation: Reservation, outcome: Outcome, *,
    stream: bool, started: float, day: str | None = None,
) -> ledger.Settlement | None:
    """finish_chat's one-statement case on the API's event loop; None when it did not apply (a
    capped or an already resolved hold, or an allowance of an earlier day): finish_chat then runs
    the transactional verbs."""
    charge, now = _charge(entry, outcome), clock.now().timestamp()
    async with pg.connection() as conn:
        return await ledger_pg.resolve_async(
            conn, reservation.hold_id, charge, now=now,
            description=_description(entry, outcome.usage) if charge else "",
            generation=_generation(principal, entry, outcome, stream, started, now), day=day,
        )


async def extend_hold_async(pg: AsyncStatements, hold_id: str, until: float) -> bool:
    """ledger.extend_hold on the API's event loop (PostgreSQL)."""
    return await pg.first_row(ledger.EXTEND_HOLD, {"hid": hold_id, "until": until}) is not None


def _charge(entry: ModelEntry, outcome: Outcome) -> int:
    """What the call costs: nothing when the upstream failed, before its first byte ("failed") or
    after ("interrupted": SPEC §3, a failed call costs nothing); else its usage at the rate."""
    usage = outcome.usage
    return usage.total_tokens * entry.rate_micro if usage and not outcome.costs_nothing else 0


def _generation(principal: Principal, entry: ModelEntry, outcome: Outcome, stream: bool, started: float,
                now: float) -> dict[str, Any]:
    """The generation record's columns, as ledger_pg.resolve writes them beside the settlement."""
    usage = outcome.usage
    return {
        "gid": outcome.generation_id, "gkid": principal.key_id, "model": entry.id, "stream": stream,
        "gstatus": outcome.status, "pt": usage.prompt_tokens if usage else 0,
        "ct": usage.completion_tokens if usage else 0, "est": outcome.usage_estimated,
        "lat": int((now - started) * 1000), "err": outcome.error_code, "created": started,
    }


def _description(entry: ModelEntry, usage: Usage | None) -> str:
    return f"{entry.id} {usage.prompt_tokens}+{usage.completion_tokens} tokens" if usage else entry.id


def helyx_block(settlement: ledger.Settlement) -> dict[str, int | float | None]:
    """`credits_remaining` is null when the balance could not be read after the charge."""
    return {
        "credits_charged": to_credits(settlement.charged),
        "credits_remaining": None if settlement.available is None else to_credits(max(0, settlement.available)),
    }

