"""Billing around the ledger for both processes: the billing day, reservations with the daily
reset applied first, settlement, and the hold sweeper.

Each function runs its own short transaction(s) on the given engine; the ledger verbs inside
stay the single place where balances change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Connection, Engine, text

from common import clock, credit_refusals, ledger, ledger_pg, pg_statements
from common.db import is_postgres, reader
from common.errors import InsufficientCredits
from common.money import to_credits

log = logging.getLogger(__name__)


def today(tz: str) -> str:
    return clock.billing_day(tz).isoformat()


def resets_at(tz: str) -> str:
    return clock.next_reset(tz).strftime("%Y-%m-%dT%H:%M:%SZ")


def reset_due(known_day: str, tz: str) -> bool:
    """Whether an allowance of `known_day` belongs to an earlier billing day than today's."""
    return known_day < today(tz)


def apply_daily_reset(engine: Engine, account_id: str, known_day: str, tz: str) -> None:
    """Run the daily reset when the account's allowance belongs to an earlier billing day."""
    if not reset_due(known_day, tz):
        return
    day = today(tz)
    with engine.begin() as conn:
        ledger.ensure_today(conn, account_id, day, now=clock.now().timestamp())


def reserve(
    engine: Engine, *, account_id: str, key_id: str | None, amount: int, purpose: str, ttl: float, tz: str,
    capped: bool = False,
) -> str:
    """A hold for `amount` micro-credits; InsufficientCredits says what is left and when it resets.

    On PostgreSQL an uncapped hold is one autocommit statement (common.ledger_pg)."""
    try:
        if is_postgres(engine) and not capped:
            with pg_statements.connection(engine) as pg:
                hold_id = ledger_pg.reserve(pg, account_id=account_id, key_id=key_id, amount=amount,
                                            purpose=purpose, now=clock.now().timestamp(), ttl=ttl)
            if hold_id is None:
                with reader(engine).connect() as conn:
                    raise credit_refusals.insufficient_error(ledger.balance(conn, account_id), amount)
            return hold_id
        with engine.begin() as conn:
            return ledger.reserve(
                conn, account_id=account_id, key_id=key_id, amount=amount, purpose=purpose,
                now=clock.now().timestamp(), ttl=ttl, cap_day=today(tz) if capped else None,
            )
    except InsufficientCredits as exc:
        raise with_reset_time(exc, tz) from None


def with_reset_time(exc: InsufficientCredits, tz: str) -> InsufficientCredits:
    """The refusal, saying when the daily allowance (and a key's daily cap) comes back."""
    what = "The key's daily cap and the daily allowance reset" if exc.code == "key_daily_cap_reached" else \
        "The daily allowance resets"
    return InsufficientCredits(f"{exc.message} {what} at {resets_at(tz)}.", code=exc.code, param=exc.param)


def available(engine: Engine, account_id: str) -> int:
    return balance(engine, account_id).available


def balance(engine: Engine, account_id: str) -> ledger.Balance:
    with reader(engine).connect() as conn:
        return ledger.balance(conn, account_id)


def key_cap_left(engine: Engine, key_id: str, tz: str) -> int | None:
    """What the key's daily credit cap still allows today; None for an uncapped key."""
    with reader(engine).connect() as conn:
        return ledger.key_cap_left(conn, key_id, today(tz))


def settle(engine: Engine, hold_id: str, charge: int, description: str = "") -> ledger.Settlement:
    """Charge at most the hold and release the rest; a retried settle is a no-op."""
    return _resolve(engine, hold_id, max(0, charge), "settle", description)


def release(engine: Engine, hold_id: str) -> ledger.Settlement:
    """Give the whole hold back; a retried release is a no-op."""
    return _resolve(engine, hold_id, 0, "release", "")


def _resolve(engine: Engine, hold_id: str, charge: int, kind: str, description: str) -> ledger.Settlement:
    """On PostgreSQL an uncapped open hold resolves in one autocommit statement; a capped or an
    already resolved one goes through the transactional verb, which handles both."""
    now = clock.now().timestamp()
    if is_postgres(engine):
        with pg_statements.connection(engine) as pg:
            done = ledger_pg.resolve(pg, hold_id, charge, now=now, description=description, kind=kind)
        if done is not None:
            return done
    with engine.begin() as conn:
        if kind == "release":
            return ledger.release(conn, hold_id, now=now)
        return ledger.settle(conn, hold_id, charge, now=now, description=description)


def expire_holds(engine: Engine) -> int:
    """Release every open hold past its expiry; returns how many. Safe to run anywhere, any time."""
    now = clock.now().timestamp()
    with engine.connect() as conn:
        hold_ids = ledger.open_expired_holds(conn, now)
    return _release_each(engine, hold_ids, lambda conn, hold_id: ledger.expire(conn, hold_id, now=now),
                         "released %d expired holds")


def release_chat_holds_of_a_past_run(engine: Engine) -> int:
    """Self-contained start-up only, where this process is the one API: a chat's hold still open was
    left by a run that died mid-call (killed, crashed). Nothing can settle it now, and until its
    expiry (15 min by default) it kept its credits held, its account's next requests refused with a
    402 saying they were "held for requests in progress". Released, charged nothing, as at its
    expiry. Returns how many."""
    now = clock.now().timestamp()
    with engine.connect() as conn:
        hold_ids = [r[0] for r in conn.execute(text("SELECT id FROM holds WHERE status = 'open' AND purpose LIKE"
                                                    " 'chat:%' AND created_at < :now"), {"now": now})]
    return _release_each(engine, hold_ids, lambda conn, hold_id: ledger.release(conn, hold_id, now=now),
                         "released %d chat hold(s) of calls the last run did not finish (nothing charged)")


def _release_each(engine: Engine, hold_ids: list[str], resolve: Callable[[Connection, str], ledger.Settlement],
                  logged: str) -> int:
    """Each hold in a transaction of its own; how many were applied (logged when any)."""
    released = 0
    for hold_id in hold_ids:
        with engine.begin() as conn:
            released += resolve(conn, hold_id).applied
    if released:
        log.warning(logged, released)
    return released


def describe_credits(micro: int) -> int | float:
    return to_credits(micro)
