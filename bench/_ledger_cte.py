"""A PROTOTYPE (for measurement only, not used by Helyx): reserve and settle as ONE PostgreSQL
statement each, data-modifying CTEs, with the same rows and the same guards as common.ledger:

    reserve: UPDATE accounts ... WHERE available >= amt  ->  INSERT holds  ->  INSERT ledger_entries
    settle:  UPDATE holds ... WHERE status = 'open'  ->  UPDATE accounts  ->  INSERT ledger_entries
             (-> give back the key's daily cap)

A statement that finds nothing to do (no credit, hold already resolved) writes nothing. Run under
AUTOCOMMIT each verb is one round trip and its own transaction (no BEGIN/COMMIT trips); under
engine.begin() it is BEGIN + 1 + COMMIT. bench/ledger.py --variant compares them with the
current verbs.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from common.errors import InsufficientCredits
from common.ids import new_id

RESERVE = text(
    "WITH a AS (UPDATE accounts SET held = held + :amt WHERE id = :aid AND allowance + topup - held >= :amt"
    " RETURNING id),"
    " h AS (INSERT INTO holds (id, account_id, key_id, amount, status, purpose, key_cap_day, created_at, expires_at)"
    " SELECT :hid, id, :kid, :amt, 'open', :purpose, NULL, :now, :exp FROM a RETURNING id)"
    " INSERT INTO ledger_entries (account_id, key_id, kind, amount, held_delta, reference, hold_id, description,"
    " created_at) SELECT :aid, :kid, 'reserve', 0, :amt, :ref, id, :purpose, :now FROM h"
)

SETTLE = text(
    "WITH h AS (UPDATE holds SET status = :status, charged = LEAST(:charge, amount), resolved_at = :now"
    " WHERE id = :hid AND status = 'open' RETURNING account_id, key_id, amount, charged, key_cap_day),"
    " a AS (UPDATE accounts SET"
    " topup = CASE WHEN accounts.allowance >= h.charged THEN accounts.topup"
    " ELSE accounts.topup - (h.charged - accounts.allowance) END,"
    " allowance = CASE WHEN accounts.allowance >= h.charged THEN accounts.allowance - h.charged ELSE 0 END,"
    " held = accounts.held - h.amount FROM h WHERE accounts.id = h.account_id"
    " RETURNING accounts.allowance, accounts.topup, accounts.held),"
    " e AS (INSERT INTO ledger_entries (account_id, key_id, kind, amount, held_delta, reference, hold_id,"
    " description, created_at) SELECT account_id, key_id, :kind, -charged, -amount, :ref, :hid, :desc, :now FROM h),"
    " c AS (UPDATE api_keys SET cap_used = CASE WHEN cap_used >= h.amount - h.charged"
    " THEN cap_used - (h.amount - h.charged) ELSE 0 END FROM h"
    " WHERE api_keys.id = h.key_id AND h.key_cap_day IS NOT NULL AND api_keys.cap_day = h.key_cap_day"
    " AND h.amount > h.charged)"
    " SELECT h.charged, a.allowance + a.topup - a.held FROM h, a"
)


def reserve(conn: Connection, *, account_id: str, key_id: str | None, amount: int, purpose: str, now: float,
            ttl: float) -> str:
    hold_id = new_id("hold")
    done = conn.execute(RESERVE, {"aid": account_id, "kid": key_id, "amt": amount, "hid": hold_id,
                                  "purpose": purpose, "now": now, "exp": now + ttl,
                                  "ref": f"reserve:{hold_id}"}).rowcount
    if done != 1:
        raise InsufficientCredits("Insufficient credits.")
    return hold_id


def settle(conn: Connection, hold_id: str, charge: int, *, now: float, description: str = "") -> tuple[int, int]:
    row = conn.execute(SETTLE, {"hid": hold_id, "status": "settled", "kind": "settle", "charge": max(0, charge),
                                "now": now, "ref": f"resolve:{hold_id}", "desc": description}).first()
    if row is None:
        raise LookupError(f"hold {hold_id} already resolved or missing")
    return int(row[0]), int(row[1])
