"""The chat path's two ledger verbs as ONE PostgreSQL statement each, run in autocommit.

Same rows, same guards and same references as common.ledger (whose docstring states the model);
only the packaging differs: a data-modifying CTE is atomic on its own, so a reservation costs one
round trip instead of five, and a settlement plus its generation record one instead of six.

Scope, deliberately narrow:
- only holds that do not count against a key's daily cap (the capped path touches the key row,
  and the ledger's lock order, key before account, is kept by the transactional verbs);
- `resolve` returns None when it did nothing (a capped or already resolved hold): the caller then
  runs the transactional verb, which handles both.
Lock order inside each statement: reserve locks only the account row (the inserts are new rows);
resolve locks the hold row, then the account row (the account update reads the hold's RETURNING),
the same order as common.ledger._resolve.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from common import ledger
from common.ids import new_id

_RESERVE = text(
    "WITH a AS (UPDATE accounts SET held = held + :amt WHERE id = :aid AND allowance + topup - held >= :amt"
    " RETURNING id),"
    " h AS (INSERT INTO holds (id, account_id, key_id, amount, status, purpose, key_cap_day, created_at, expires_at)"
    " SELECT :hid, a.id, :kid, :amt, 'open', :purpose, NULL, :now, :expires FROM a RETURNING id)"
    " INSERT INTO ledger_entries (account_id, key_id, kind, amount, held_delta, reference, hold_id, description,"
    " created_at) SELECT :aid, :kid, 'reserve', 0, :amt, :ref, h.id, :purpose, :now FROM h"
)

_RESOLVE = text(
    "WITH h AS (UPDATE holds SET status = :status, charged = LEAST(:charge, amount), resolved_at = :now"
    " WHERE id = :hid AND status = 'open' AND key_cap_day IS NULL"
    " RETURNING account_id, key_id, amount, charged),"
    " a AS (UPDATE accounts SET"
    " topup = CASE WHEN accounts.allowance >= h.charged THEN accounts.topup"
    " ELSE accounts.topup - (h.charged - accounts.allowance) END,"
    " allowance = CASE WHEN accounts.allowance >= h.charged THEN accounts.allowance - h.charged ELSE 0 END,"
    " held = accounts.held - h.amount FROM h WHERE accounts.id = h.account_id"
    " RETURNING accounts.allowance + accounts.topup - accounts.held AS available),"
    " e AS (INSERT INTO ledger_entries (account_id, key_id, kind, amount, held_delta, reference, hold_id,"
    " description, created_at) SELECT h.account_id, h.key_id, :kind, -h.charged, -h.amount, :ref, :hid, :desc,"
    " :now FROM h),"
    " g AS (INSERT INTO generations (id, account_id, key_id, model, stream, status, prompt_tokens,"
    " completion_tokens, credits, usage_estimated, latency_ms, error_code, created_at)"
    " SELECT :gid, h.account_id, :gkid, :model, :stream, :gstatus, :pt, :ct, h.charged, :est, :lat, :err, :created"
    " FROM h ON CONFLICT (id) DO NOTHING)"
    " SELECT h.charged, a.available FROM h, a"
)


def reserve(
    conn: Connection, *, account_id: str, key_id: str | None, amount: int, purpose: str, now: float, ttl: float,
) -> str | None:
    """An uncapped hold in one statement; None when the balance cannot cover it (nothing written)."""
    if amount <= 0:
        raise ValueError("a hold must be positive")
    hold_id = new_id("hold")
    written = conn.execute(_RESERVE, {
        "aid": account_id, "kid": key_id, "amt": amount, "hid": hold_id, "purpose": purpose, "now": now,
        "expires": now + ttl, "ref": f"reserve:{hold_id}",
    }).rowcount
    return hold_id if written == 1 else None


def resolve_with_generation(
    conn: Connection, hold_id: str, charge: int, *, now: float, description: str, generation: dict[str, Any],
) -> ledger.Settlement | None:
    """Settle (charge > 0) or release (charge 0) an uncapped open hold and record the generation,
    in one statement; None when it did nothing (capped or already resolved hold)."""
    status, kind = ("settled", "settle") if charge > 0 else ("released", "release")
    row = conn.execute(_RESOLVE, {
        "hid": hold_id, "status": status, "kind": kind, "charge": max(0, charge), "now": now,
        "ref": f"resolve:{hold_id}", "desc": description, **generation,
    }).first()
    if row is None:
        return None
    return ledger.Settlement(hold_id, int(row[0]), int(row[1]), applied=True)
