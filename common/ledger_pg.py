"""The hot ledger verbs as ONE PostgreSQL statement each, run in autocommit (common.pg_statements).

Same rows, same guards and same references as common.ledger (whose docstring states the model);
only the packaging differs: a data-modifying CTE is atomic on its own, so a reservation costs one
round trip instead of five, and a settlement plus its generation record one instead of six.

Scope, deliberately narrow:
- only holds that do not count against a key's daily cap (the capped path touches the key row,
  and the ledger's lock order, key before account, is kept by the transactional verbs);
- `resolve` returns None when it did nothing (a capped or already resolved hold, an account with an
  allowance deficit to reclaim (common.ledger._reclaim), or, given today's billing day, an
  account whose allowance is still an earlier day's: the daily reset is lazy): the caller then
  runs the transactional verb, which handles them all.
Lock order inside each statement: reserve locks only the account row (the inserts are new rows);
resolve locks the account row, then the hold row (see _LOCKED_ACCOUNT). common.ledger._resolve
takes them the other way round (hold, key, account): only two resolutions of the same hold at
once, one by each path (a settlement racing the sweeper's expiry of that hold), can deadlock, and
PostgreSQL then aborts one, which retries or finds the hold resolved; any other pair (other holds
of the account, reservations, plan changes, resets, grants) takes the account row alone or
first.

A chat reservation (`reserve_async`) commits without waiting for the WAL flush
(`synchronous_commit` off for its own transaction only, set inside the statement). Other
transactions see the hold as soon as it commits, so concurrent requests are held back exactly as
before, and the settlement commits synchronously: WAL is written in order, so its flush covers
the reservation too, and no charge is ever recorded or reported on a reservation that could
still vanish. What a PostgreSQL crash (not a clean stop, which flushes) can lose is a
reservation made in its last moments, while that call's upstream request (and, for a stream,
its first chunks) is under way; the settlement then finds no hold and the call charges nothing,
answering 503 or ending its stream with an error event (api.chat_stream). A durable hold would
have let that settlement succeed once the database was back within its patience; we trade those
few free calls per crash for ~0.2 ms off every chat. A job's reservation stays synchronous: the
202 and the queued message act on it at once.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from common import ledger
from common.ids import new_id

_RESERVE_HEAD = (
    "WITH a AS (UPDATE accounts SET held = held + %(amt)s WHERE id = %(aid)s AND allowance + topup - held >= %(amt)s"
    " RETURNING id, allowance + topup - held AS available),"
    " h AS (INSERT INTO holds (id, account_id, key_id, amount, status, purpose, key_cap_day, created_at, expires_at)"
    " SELECT %(hid)s, a.id, %(kid)s, %(amt)s, 'open', %(purpose)s, NULL, %(now)s, %(expires)s FROM a RETURNING id)"
)
_RESERVE_ENTRY = (
    "INSERT INTO ledger_entries (account_id, key_id, kind, amount, held_delta, reference, hold_id, description,"
    " created_at) SELECT %(aid)s, %(kid)s, 'reserve', 0, %(amt)s, %(ref)s, h.id, %(purpose)s, %(now)s FROM h"
)
_RESERVE = f"{_RESERVE_HEAD} {_RESERVE_ENTRY}"
# The same statement, its transaction committing without waiting for the flush (see above). The
# account update reads `s`, so the setting is made before anything is written; `true` = this
# transaction only, so the connection's own setting is untouched.
_RESERVE_UNFLUSHED = _RESERVE.replace(
    "WITH a AS (UPDATE accounts SET held = held + %(amt)s WHERE",
    "WITH s AS (SELECT set_config('synchronous_commit', 'off', true)),"
    " a AS (UPDATE accounts SET held = held + %(amt)s FROM s WHERE", 1)
assert _RESERVE_UNFLUSHED != _RESERVE

# The account's row first, locked, and only if it has no allowance deficit for today (a plan
# change or reset left allowance that only open holds needed: common.ledger._reclaim takes it
# back, with its own row, in the transactional verb) and, with a billing day, only if its
# allowance is already that day's. Locked first because a plan change committing meanwhile must
# be seen: FOR UPDATE re-checks the condition on the row as that change left it, where a plain
# subquery read the row as it was and let the settlement skip the reclaim.
_LOCKED_ACCOUNT = (
    "WITH l AS (SELECT accounts.id FROM accounts JOIN holds ON holds.account_id = accounts.id"
    " WHERE holds.id = %(hid)s AND (accounts.allowance_deficit = 0 OR accounts.deficit_day <> accounts.allowance_day)"
    "{today} FOR UPDATE OF accounts),"
)
_RESOLVE_BODY = (
    " h AS (UPDATE holds SET status = %(status)s, charged = LEAST(%(charge)s, amount), resolved_at = %(now)s"
    " WHERE id = %(hid)s AND status = 'open' AND key_cap_day IS NULL AND EXISTS (SELECT 1 FROM l)"
    " RETURNING account_id, key_id, amount, charged),"
    " a AS (UPDATE accounts SET"
    " topup = CASE WHEN accounts.allowance >= h.charged THEN accounts.topup"
    " ELSE accounts.topup - (h.charged - accounts.allowance) END,"
    " allowance = CASE WHEN accounts.allowance >= h.charged THEN accounts.allowance - h.charged ELSE 0 END,"
    " held = accounts.held - h.amount FROM h WHERE accounts.id = h.account_id"
    " RETURNING accounts.allowance + accounts.topup - accounts.held AS available),"
    " e AS (INSERT INTO ledger_entries (account_id, key_id, kind, amount, held_delta, reference, hold_id,"
    " description, created_at) SELECT h.account_id, h.key_id, %(kind)s, -h.charged, -h.amount, %(ref)s, %(hid)s,"
    " %(desc)s, %(now)s FROM h)"
)
# Only when the account's allowance is already today's: a settlement must not spend what is left
# of an earlier day's allowance (the daily reset runs lazily, on the account's next request). The
# transactional verb, which runs the reset first, takes the rest.
_RESOLVE_HEAD = _LOCKED_ACCOUNT.format(today="") + _RESOLVE_BODY
_ON_TODAYS_ALLOWANCE = _LOCKED_ACCOUNT.format(today=" AND accounts.allowance_day >= %(day)s") + _RESOLVE_BODY
_GENERATION = (
    ", g AS (INSERT INTO generations (id, account_id, key_id, model, stream, status, prompt_tokens,"
    " completion_tokens, credits, usage_estimated, latency_ms, error_code, created_at)"
    " SELECT %(gid)s, h.account_id, %(gkid)s, %(model)s, %(stream)s, %(gstatus)s, %(pt)s, %(ct)s, h.charged,"
    " %(est)s, %(lat)s, %(err)s, %(created)s FROM h ON CONFLICT (id) DO NOTHING)"
)
_RESOLVE_TAIL = " SELECT h.charged, a.available FROM h, a"
_RESOLVE_SQL = {  # (with a generation record, checking the allowance's day)
    (False, False): _RESOLVE_HEAD + _RESOLVE_TAIL,
    (True, False): _RESOLVE_HEAD + _GENERATION + _RESOLVE_TAIL,
    (False, True): _ON_TODAYS_ALLOWANCE + _RESOLVE_TAIL,
    (True, True): _ON_TODAYS_ALLOWANCE + _GENERATION + _RESOLVE_TAIL,
}


def reserve(
    conn: psycopg.Connection, *, account_id: str, key_id: str | None, amount: int, purpose: str, now: float,
    ttl: float,
) -> str | None:
    """An uncapped hold in one statement; None when the balance cannot cover it (nothing written)."""
    hold_id, sql, params = _reserve_statement(account_id, key_id, amount, purpose, now, ttl, None, None)
    return hold_id if conn.execute(sql, params).rowcount == 1 else None


def reserve_and_insert(
    conn: psycopg.Connection, *, account_id: str, key_id: str | None, amount: int, purpose: str, now: float,
    ttl: float, insert: str, insert_params: dict[str, Any],
) -> dict[str, Any] | None:
    """`reserve`, with a row that must exist exactly when the hold does (a job) written in the same
    statement: `insert` is an `INSERT ... SELECT ... FROM h ... RETURNING ...`, where `h.id` is the
    new hold's id and `(SELECT available FROM a)` the account's available credits once it is held.
    If the insert fails (a unique key), nothing of the statement is written. The row the insert
    returned (its columns by name; it names its hold); None when the balance cannot cover the hold."""
    _, sql, params = _reserve_statement(account_id, key_id, amount, purpose, now, ttl, insert, insert_params)
    with conn.cursor(row_factory=dict_row) as cursor:
        row: dict[str, Any] | None = cursor.execute(sql, params).fetchone()
    return row


async def reserve_async(
    conn: psycopg.AsyncConnection[Any], *, account_id: str, key_id: str | None, amount: int, purpose: str,
    now: float, ttl: float,
) -> str | None:
    """`reserve` on an async connection (the API's event loop, common.pg_async), for a chat call:
    committed without waiting for the WAL flush (see the module docstring)."""
    hold_id, _, params = _reserve_statement(account_id, key_id, amount, purpose, now, ttl, None, None)
    return hold_id if (await conn.execute(_RESERVE_UNFLUSHED, params)).rowcount == 1 else None


def resolve(
    conn: psycopg.Connection, hold_id: str, charge: int, *, now: float, description: str,
    generation: dict[str, Any] | None = None, kind: str | None = None, day: str | None = None,
) -> ledger.Settlement | None:
    """Settle or release an uncapped open hold, and record the generation when one is given, in
    one statement; None when it did nothing (capped or already resolved hold, an allowance deficit,
    or, with `day` (today's billing day), an account whose allowance is still an earlier day's). `kind` is
    "settle" or "release", as common.ledger records them; by default, settle when there is a charge."""
    sql, params = resolve_statement(hold_id, charge, now, description, generation, kind, day)
    return _settlement(hold_id, conn.execute(sql, params).fetchone())


async def resolve_async(
    conn: psycopg.AsyncConnection[Any], hold_id: str, charge: int, *, now: float, description: str,
    generation: dict[str, Any] | None = None, kind: str | None = None, day: str | None = None,
) -> ledger.Settlement | None:
    """`resolve` on an async connection (the API's event loop, common.pg_async)."""
    sql, params = resolve_statement(hold_id, charge, now, description, generation, kind, day)
    return _settlement(hold_id, await (await conn.execute(sql, params)).fetchone())


def _reserve_statement(
    account_id: str, key_id: str | None, amount: int, purpose: str, now: float, ttl: float,
    insert: str | None, insert_params: dict[str, Any] | None,
) -> tuple[str, str, dict[str, Any]]:
    if amount <= 0:
        raise ValueError("a hold must be positive")
    hold_id = new_id("hold")
    sql = _RESERVE if insert is None else f"{_RESERVE_HEAD}, e AS ({_RESERVE_ENTRY}) {insert}"
    return hold_id, sql, {
        "aid": account_id, "kid": key_id, "amt": amount, "hid": hold_id, "purpose": purpose, "now": now,
        "expires": now + ttl, "ref": f"reserve:{hold_id}", **(insert_params or {}),
    }


def resolve_statement(
    hold_id: str, charge: int, now: float, description: str, generation: dict[str, Any] | None, kind: str | None,
    day: str | None,
) -> tuple[str, dict[str, Any]]:
    """`resolve`'s statement (psycopg's form) and its parameters, for a caller that sends it with
    others (common.jobs.lifecycle_pg)."""
    kind = kind or ("settle" if charge > 0 else "release")
    status = {"settle": "settled", "release": "released"}[kind]
    return _RESOLVE_SQL[generation is not None, day is not None], {
        "hid": hold_id, "status": status, "kind": kind, "charge": max(0, charge), "now": now,
        "ref": f"resolve:{hold_id}", "desc": description, "day": day, **(generation or {}),
    }


def _settlement(hold_id: str, row: tuple[Any, ...] | None) -> ledger.Settlement | None:
    return None if row is None else ledger.Settlement(hold_id, int(row[0]), int(row[1]), applied=True)
