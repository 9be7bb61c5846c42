"""A chat request's key lookup and its reservation in ONE PostgreSQL statement (api.chat_admission).

The key lookup (common.accounts) and the reservation (common.ledger_pg) were two round trips, one
after the other; on this VM a round trip to PostgreSQL costs about as much as everything else the
API does for a request. This statement does both: it reads the key and its account as
`accounts.authenticate` does, and, only when the ordinary reservation would succeed outright,
holds the credits as `ledger_pg.reserve_async` does (same rows, same reference, the same
unflushed commit). It reserves nothing, and changes nothing, when the key is unknown, revoked or
expired, when the key has a daily cap (the capped path locks the key row: common.ledger), when
the account's plan may not use the model, when the account's allowance is an earlier day's (the
daily reset runs first, in common.billing), or when the balance cannot cover the whole hold (the
caller then shrinks max_tokens or answers 402). The principal's columns come back either way, so
the caller goes on from there without a second lookup.

The key's columns, and the account's plan, billing day and balance, are read as of the statement's
start, as the separate lookup read them; the account row the UPDATE locks is checked again in its
latest version. A hold is made only when both pass: a plan change, a daily reset or another hold
committed meanwhile can make the statement hold nothing (the request then goes on as in turn),
never hold what the account no longer allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from common.accounts import PRINCIPAL_COLUMNS
from common.ids import new_id

_ADMIT = (
    f"WITH k AS (SELECT {', '.join(PRINCIPAL_COLUMNS)} FROM api_keys k JOIN accounts a ON a.id = k.account_id"
    " WHERE k.key_hash = %(h)s),"
    " s AS (SELECT set_config('synchronous_commit', 'off', true)),"
    " a AS (UPDATE accounts SET held = held + %(amt)s FROM k, s WHERE accounts.id = k.account_id"
    " AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > %(now)s) AND k.daily_cap IS NULL"
    " AND accounts.plan = ANY(%(plans)s) AND accounts.allowance_day >= %(day)s"
    " AND accounts.allowance + accounts.topup - accounts.held >= %(amt)s"
    " RETURNING accounts.id AS account_id, k.id AS key_id),"
    " h AS (INSERT INTO holds (id, account_id, key_id, amount, status, purpose, key_cap_day, created_at, expires_at)"
    " SELECT %(hid)s, a.account_id, a.key_id, %(amt)s, 'open', %(purpose)s, NULL, %(now)s, %(expires)s FROM a"
    " RETURNING id, account_id, key_id),"
    " e AS (INSERT INTO ledger_entries (account_id, key_id, kind, amount, held_delta, reference, hold_id,"
    " description, created_at) SELECT h.account_id, h.key_id, 'reserve', 0, %(amt)s, %(ref)s, h.id, %(purpose)s,"
    " %(now)s FROM h)"
    " SELECT k.*, (SELECT id FROM h) FROM k"
)


@dataclass(frozen=True, slots=True)
class Admitted:
    """The key's row (PRINCIPAL_COLUMNS' values; None for an unknown key) and the hold, if one was made."""

    key_row: tuple[Any, ...] | None
    hold_id: str | None


async def authenticate_and_reserve(
    conn: psycopg.AsyncConnection[Any], *, key_hash: str, plans: Sequence[str], day: str, amount: int,
    purpose: str, now: float, ttl: float,
) -> Admitted:
    """Look the key up and, when everything allows it, hold `amount` for it (see the module docstring).
    `plans` are the plans that may use the model; `day` is today's billing day."""
    if amount <= 0:
        raise ValueError("a hold must be positive")
    hold_id = new_id("hold")
    cursor = await conn.execute(_ADMIT, {
        "h": key_hash, "plans": list(plans), "day": day, "amt": amount, "hid": hold_id, "purpose": purpose,
        "now": now, "expires": now + ttl, "ref": f"reserve:{hold_id}",
    })
    row = await cursor.fetchone()
    if row is None:
        return Admitted(None, None)
    return Admitted(tuple(row[:-1]), row[-1])
