"""Read-only views for the API and the CLI: credits, usage, keys, accounts. No writes here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from common import billing, clock, ledger
from common.db import is_postgres, reader
from common.errors import InvalidRequest, NotFound
from common.money import to_credits
from common.plans import daily_allowance_micro

# What the account was charged since the billing day began, from the allowance and top-up alike.
# Not the allowance's shortfall (daily - allowance left): that misses top-up spending, and a plan
# change moves the allowance without anything being used.
_CHARGED_SINCE = text("SELECT COALESCE(SUM(-amount), 0) FROM ledger_entries"
                      " WHERE account_id = :aid AND kind = 'settle' AND created_at >= :since")


def _allowance_left(allowance: int, allowance_day: str, plan: str, today: str) -> int:
    """Today's allowance left: the row's, or the plan's whole day before the account's first
    request of the day (the reset is lazy, on that request)."""
    return allowance if allowance_day >= today else daily_allowance_micro(plan)


def credits_summary(engine: Engine, account_id: str, tz: str) -> dict[str, Any]:
    # One snapshot for both reads: in autocommit, a settlement committed between them was counted in
    # used_today but not yet in the allowance or the holds (SQLite's connection is one transaction already).
    snapshot = engine.execution_options(isolation_level="REPEATABLE READ") if is_postgres(engine) else engine
    with snapshot.connect() as conn:
        bal = ledger.balance(conn, account_id)
        used = conn.execute(_CHARGED_SINCE, {"aid": account_id, "since": clock.day_start(tz).timestamp()}).scalar()
    daily = daily_allowance_micro(bal.plan)
    allowance_left = _allowance_left(bal.allowance, bal.allowance_day, bal.plan, billing.today(tz))
    return {
        "object": "credits",
        "account_id": account_id,
        "plan": bal.plan,
        "daily_allowance": to_credits(daily),
        "used_today": to_credits(int(used or 0)),
        "allowance_remaining": to_credits(allowance_left),
        "topup_balance": to_credits(bal.topup),
        "held": to_credits(bal.held),
        "remaining": to_credits(max(0, allowance_left + bal.topup - bal.held)),
        "resets_at": billing.resets_at(tz),
    }


def _entry_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "ledger.entry",
        "kind": row.kind,
        "credits": to_credits(row.amount),
        "held": to_credits(row.held_delta),
        "key_id": row.key_id,
        "reference": row.reference,
        "description": row.description,
        "created_at": row.created_at,
        "usage": _usage_view(row),
    }


def _usage_view(row: Any) -> dict[str, Any] | None:
    """What a settlement paid for (SPEC: "ledger and usage rows"): the chat call's tokens, or the
    media job; None for every other entry."""
    if row.g_id is not None:
        return {"generation_id": row.g_id, "model": row.g_model, "status": row.g_status,
                "prompt_tokens": row.g_prompt, "completion_tokens": row.g_completion,
                "total_tokens": row.g_prompt + row.g_completion}
    if row.j_id is not None:
        return {"job_id": row.j_id, "type": row.j_type, "model": row.j_model, "status": row.j_status}
    return None


# A resolving entry's hold names its call (`chat:<generation id>`, `job:<job id>`): the primary
# keys are looked up, so a page costs two index probes per entry.
_USAGE_QUERY = (
    "SELECT e.id, e.kind, e.amount, e.held_delta, e.key_id, e.reference, e.description, e.created_at,"
    " g.id AS g_id, g.model AS g_model, g.status AS g_status, g.prompt_tokens AS g_prompt,"
    " g.completion_tokens AS g_completion, j.id AS j_id, j.type AS j_type, j.model AS j_model, j.status AS j_status"
    " FROM ledger_entries e"
    " LEFT JOIN holds h ON h.id = e.hold_id AND e.kind IN ('settle', 'release', 'expire')"
    " LEFT JOIN generations g ON h.purpose LIKE 'chat:%' AND g.id = substr(h.purpose, 6)"
    " LEFT JOIN jobs j ON h.purpose LIKE 'job:%' AND j.id = substr(h.purpose, 5)"
)


MAX_PAGE = 500  # entries per page of GET /usage and `helyx usage`
_OWN_KEY = text("SELECT 1 FROM api_keys WHERE id = :kid AND account_id = :aid")
_ENTRY_TIME = text("SELECT created_at FROM ledger_entries WHERE id = :id AND account_id = :aid")


def list_usage(
    engine: Engine, account_id: str, *, key_id: str | None = None, since: float | None = None,
    until: float | None = None, limit: int = 50, after: int | None = None,
) -> dict[str, Any]:
    """Newest first; `after` is the `next_cursor` of the previous page.

    By id (one sequence: a new entry always comes first, which an incremental export relies on),
    except with `until`: then by time, ties by id. By id, PostgreSQL walked the ledger's primary key
    back from its newest entry, every account's, until it passed `until` (0.3-0.6 s for a busy
    account's month-old window in a ledger of 3 million entries, for any key holder to ask again);
    by time, the account's own entries are read from `until` back (ix_ledger_account_created)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}.", param="limit")
    clauses = ["e.account_id = :aid"]
    params: dict[str, Any] = {"aid": account_id, "n": limit + 1}
    for clause, name, value in (
        ("e.key_id = :kid", "kid", key_id), ("e.created_at >= :since", "since", since),
        ("e.created_at < :until", "until", until),
    ):
        if value is not None:
            clauses.append(clause)
            params[name] = value
    by_time = until is not None
    with reader(engine).connect() as conn:
        if key_id is not None and conn.execute(_OWN_KEY, {"kid": key_id, "aid": account_id}).first() is None:
            # an unknown key and another account's read the same; an empty page would look like no usage
            raise NotFound(f"No API key {key_id}", code="key_not_found", param="key_id")
        if after is not None and by_time:
            pivot = conn.execute(_ENTRY_TIME, {"id": after, "aid": account_id}).scalar()
            if pivot is None:  # an unknown entry and another account's read the same
                raise NotFound(f"No usage entry {after} to list after (give the next_cursor of the previous page).",
                               code="usage_entry_not_found", param="after")
            clauses.append("(e.created_at, e.id) < (:pivot, :after)")
            params.update(pivot=pivot, after=after)
        elif after is not None:
            clauses.append("e.id < :after")
            params["after"] = after
        order = "e.created_at DESC, e.id DESC" if by_time else "e.id DESC"
        rows = conn.execute(text(f"{_USAGE_QUERY} WHERE {' AND '.join(clauses)} ORDER BY {order} LIMIT :n"),
                            params).all()
    page = rows[:limit]
    has_more = len(rows) > limit
    return {
        "object": "list",
        "data": [_entry_view(r) for r in page],
        "has_more": has_more,
        "next_cursor": page[-1].id if has_more and page else None,
    }


def key_view(row: Any, today: str) -> dict[str, Any]:
    """A key as GET /keys shows it; with a daily cap, what the cap leaves today (`today`, the
    billing day): what a new request can still hold against it."""
    left = ledger.cap_left(row.daily_cap, row.cap_used, row.cap_day, today) if row.daily_cap is not None else None
    return {
        "id": row.id,
        "object": "api_key",
        "name": row.name,
        "prefix": row.prefix,
        "created_at": row.created_at,
        "last_used_at": row.last_used_at,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
        "daily_credit_cap": to_credits(row.daily_cap) if row.daily_cap is not None else None,
        "daily_credit_cap_remaining": to_credits(left) if left is not None else None,
    }


def list_keys(engine: Engine, account_id: str, *, today: str, limit: int = 100,
              after: str | None = None) -> dict[str, Any]:
    """Oldest first, paginated: revoked keys stay listed, and an account may make about 100 a day."""
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100.", param="limit")
    query = ("SELECT id, name, prefix, created_at, last_used_at, expires_at, revoked_at, daily_cap, cap_used, cap_day"
             " FROM api_keys WHERE account_id = :aid")
    params: dict[str, Any] = {"aid": account_id, "n": limit + 1}
    with reader(engine).connect() as conn:
        if after is not None:
            start = conn.execute(text("SELECT created_at FROM api_keys WHERE id = :k AND account_id = :aid"),
                                 {"k": after, "aid": account_id}).first()
            if start is None:
                raise NotFound(f"No API key {after} to list after.", code="key_not_found", param="after")
            query += " AND (created_at > :c OR (created_at = :c AND id > :k))"
            params.update(c=start.created_at, k=after)
        rows = conn.execute(text(query + " ORDER BY created_at, id LIMIT :n"), params).all()
    data = [key_view(r, today) for r in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


def list_accounts(engine: Engine, tz: str, *, limit: int = 100, after: str | None = None) -> dict[str, Any]:
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit must be between 1 and 1000.", param="limit")
    query = "SELECT id, email, plan, allowance, allowance_day, topup, held, created_at FROM accounts"
    params: dict[str, Any] = {"n": limit + 1}
    if after:  # oldest first: an account made during a walk comes on a later page, never before the cursor
        query += " WHERE (created_at, id) > (SELECT created_at, id FROM accounts WHERE id = :after)"
        params["after"] = after
    with reader(engine).connect() as conn:
        if after and conn.execute(text("SELECT 1 FROM accounts WHERE id = :a"), {"a": after}).first() is None:
            raise NotFound(f"No account {after} to list after.", code="account_not_found", param="after")
        rows = conn.execute(text(query + " ORDER BY created_at, id LIMIT :n"), params).all()
    page, today = rows[:limit], billing.today(tz)
    return {
        "object": "list",
        "data": [  # before an account's first request of the day, its allowance is the plan's, as in /credits
            {"id": r.id, "email": r.email, "plan": r.plan,
             "allowance_remaining": to_credits(_allowance_left(r.allowance, r.allowance_day, r.plan, today)),
             "topup_balance": to_credits(r.topup), "held": to_credits(r.held), "created_at": r.created_at}
            for r in page
        ],
        "has_more": len(rows) > limit,
        "next_cursor": page[-1].id if len(rows) > limit and page else None,
    }
