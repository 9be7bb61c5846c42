"""Accounts and API keys: creation, revocation, and turning a presented key into its account.

Authentication reads the key and its account in one query, every request, with no cache: a
revoked key fails on the very next request in every process. `last_used_at` is written at most
once a minute per key, so it costs nothing on the hot path.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from common import keys, pg_statements
from common.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from common.ids import new_id
from common.pg_async import AsyncStatements
from common.plans import daily_allowance_micro, is_plan

LAST_USED_RESOLUTION = 60.0
LATEST_EXPIRY = 95_617_584_000  # 5000-01-01 in unix seconds: a later expiry was meant in milliseconds

# What a principal is made of, in principal_from_row's order (k: api_keys, a: accounts).
PRINCIPAL_COLUMNS = ("k.id", "k.account_id", "k.expires_at", "k.revoked_at", "k.daily_cap", "k.last_used_at",
                     "k.prefix", "a.plan", "a.allowance_day")
_AUTH = text(
    f"SELECT {', '.join(PRINCIPAL_COLUMNS)} FROM api_keys k JOIN accounts a ON a.id = k.account_id"
    " WHERE k.key_hash = :h"
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key and its account, as of this request."""

    key_id: str
    account_id: str
    plan: str
    key_prefix: str
    daily_cap: int | None
    allowance_day: str
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class NewKey:
    id: str
    secret: str  # shown once, never stored
    prefix: str
    name: str
    created_at: float
    expires_at: float | None
    daily_cap: int | None


MAX_ACTIVE_KEYS = 100  # per account, active or made in the last day: rate limits count per key, so this bounds
# what minting keys buys
MAX_KEY_NAME_CHARS = 100
MAX_EMAIL_CHARS = 254  # RFC 5321's limit on a path, less its angle brackets
KEY_CHURN_SECONDS = 86_400  # a revoked key still counts towards MAX_ACTIVE_KEYS for this long
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EMAIL = re.compile(r"[^\s@\x00-\x1f\x7f]+@[^\s@\x00-\x1f\x7f]+")
_EMAIL_LOCK_SPACE = 1213  # the first key of the two-key advisory locks that serialize one mailbox's creation


def create_account(conn: Connection, email: str, plan: str, *, day: str, now: float) -> tuple[str, NewKey]:
    """A new account with today's full allowance and a first key."""
    # One spelling of each character (é typed as one code point or as e and an accent), so that two
    # spellings of one address are one account.
    email = unicodedata.normalize("NFC", email.strip())
    # No spaces or control characters (logs and exports carry it); SMTP's limits on its length.
    if not _EMAIL.fullmatch(email) or len(email) > MAX_EMAIL_CHARS or len(email.rpartition("@")[0]) > 64:
        raise InvalidRequest(f"{email[:80]!r} is not an email address (at most 64 characters before the @ and "
                             f"{MAX_EMAIL_CHARS} in all).", param="email")
    if any(unicodedata.category(character) == "Cf" for character in email):  # invisible: it could pass for another
        raise InvalidRequest("An email address may not hold invisible formatting characters (such as a "
                             "right-to-left override or a zero-width space).", param="email")
    if not is_plan(plan):
        raise InvalidRequest(f"Unknown plan {plan!r}: use free, plus, pro or ultra.", param="plan")
    # Dave@Example.com and dave@example.com are one mailbox in practice: one account (a rare write,
    # so the scan without an index on lower(email) costs nothing that matters). Two creations of one
    # mailbox at once take turns on PostgreSQL (SQLite's BEGIN IMMEDIATE serializes already): both
    # checked before either inserted, and made two accounts, or failed on the unique index as a 500.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:space, hashtext(lower(:e)))"),
                     {"space": _EMAIL_LOCK_SPACE, "e": email})
    lower = "unicode_lower" if conn.dialect.name == "sqlite" else "lower"  # (common.db: SQLite's folds ASCII only)
    if conn.execute(text(f"SELECT 1 FROM accounts WHERE {lower}(email) = {lower}(:e)"), {"e": email}).first():
        raise Conflict(f"An account with email {email} exists already.", code="account_exists")
    account_id = new_id("acct")
    allowance = daily_allowance_micro(plan)
    conn.execute(
        text(
            "INSERT INTO accounts (id, email, plan, allowance, topup, held, allowance_day, created_at)"
            " VALUES (:id, :email, :plan, :allowance, 0, 0, :day, :now)"
        ),
        {"id": account_id, "email": email, "plan": plan, "allowance": allowance, "day": day, "now": now},
    )
    conn.execute(
        text(
            "INSERT INTO ledger_entries (account_id, kind, amount, held_delta, reference, description, created_at)"
            " VALUES (:aid, 'reset', :amt, 0, :ref, 'opening allowance', :now)"
        ),
        {"aid": account_id, "amt": allowance, "ref": f"reset:{account_id}:{day}", "now": now},
    )
    return account_id, create_key(conn, account_id, name="default", now=now)


def create_key(
    conn: Connection, account_id: str, *, name: str = "", now: float, expires_at: float | None = None,
    daily_cap: int | None = None, count_recent: bool = False,
) -> NewKey:
    """A new key for the account. `count_recent` (the account's own POST /keys): keys made in the
    last day count towards the cap even once revoked, as each key has a rate limit of its own and
    making and revoking keys in turn got around the cap, and every rate limit. The operator's paths
    (the CLI, the admin API, the demo's start) count the active keys only."""
    if conn.execute(text("SELECT 1 FROM accounts WHERE id = :a"), {"a": account_id}).first() is None:
        raise NotFound(f"No account {account_id}", code="account_not_found")
    if len(name) > MAX_KEY_NAME_CHARS or _CONTROL.search(name):  # the API's limits, for the CLI as well
        raise InvalidRequest(f"A key's name is at most {MAX_KEY_NAME_CHARS} characters, without control "
                             "characters (tabs, line breaks).", param="name")
    # NaN compares false with every time: such a key would never expire.
    if expires_at is not None and (not math.isfinite(expires_at) or expires_at <= now):
        raise InvalidRequest("expires_at must be a time in the future (unix seconds).", param="expires_at")
    if expires_at is not None and expires_at >= LATEST_EXPIRY:  # milliseconds, most likely: a key for ever
        shown = f"{expires_at:.0f}" if expires_at < 1e15 else f"{expires_at:.3g}"  # not 300 digits
        raise InvalidRequest(f"expires_at is in unix seconds; {shown} is in the year 5000 or later "
                             "(milliseconds?).", param="expires_at")
    if daily_cap is not None and daily_cap <= 0:
        raise InvalidRequest("daily_credit_cap must be positive.", param="daily_credit_cap")
    if conn.dialect.name == "postgresql":  # one key creation per account at a time, or the count races
        conn.execute(text("SELECT 1 FROM accounts WHERE id = :a FOR UPDATE"), {"a": account_id})
    since = now - KEY_CHURN_SECONDS if count_recent else now
    counted = conn.execute(text("SELECT COUNT(*) FROM api_keys WHERE account_id = :a AND (created_at > :since"
                                " OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > :now)))"),
                           {"a": account_id, "now": now, "since": since}).scalar_one()
    if counted >= MAX_ACTIVE_KEYS:
        if count_recent:
            detail = "keys active or made in the last 24 hours; a revoked key stops counting a day after it was made"
        else:
            detail = "active keys; revoke one first"
        raise Conflict(f"The account has {counted} {detail}.", code="key_limit_reached")
    secret = keys.generate_key()
    key = NewKey(new_id("key"), secret, keys.display_prefix(secret), name, now, expires_at, daily_cap)
    conn.execute(
        text(
            "INSERT INTO api_keys (id, account_id, name, key_hash, prefix, created_at, expires_at, daily_cap,"
            " cap_used, cap_day) VALUES (:id, :aid, :name, :hash, :prefix, :now, :exp, :cap, 0, '')"
        ),
        {"id": key.id, "aid": account_id, "name": name, "hash": keys.hash_key(secret), "prefix": key.prefix,
         "now": now, "exp": expires_at, "cap": daily_cap},
    )
    return key


def revoke_key(conn: Connection, key_id: str, *, now: float, account_id: str | None = None) -> None:
    """Revoke a key (an account may revoke only its own). Revoking twice is harmless."""
    query = "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, :now) WHERE id = :kid"
    params: dict[str, object] = {"kid": key_id, "now": now}
    if account_id is not None:
        query += " AND account_id = :aid"
        params["aid"] = account_id
    if conn.execute(text(query), params).rowcount != 1:
        raise NotFound(f"No API key {key_id}", code="key_not_found", param="id")


def authenticate(engine: Engine, presented: str | None, *, now: float) -> Principal:
    """The principal for a presented `hx-` key, or AuthenticationFailed.

    A malformed key (wrong shape or checksum) is refused before any database query."""
    params = lookup_params(presented)
    return principal_from_row(pg_statements.first_row(engine, _AUTH, params), now)


async def authenticate_async(pg: AsyncStatements, presented: str | None, *, now: float) -> Principal:
    """`authenticate` on the API's event loop (PostgreSQL, common.pg_async)."""
    params = lookup_params(presented)
    return principal_from_row(await pg.first_row(_AUTH, params), now)


def lookup_params(presented: str | None) -> dict[str, str]:
    """The key lookup's parameters (`:h`, the key's hash); a missing or malformed key is refused
    here, before any query."""
    return {"h": keys.hash_key(refuse_malformed(presented))}


def refuse_malformed(presented: str | None) -> str:
    """The key as presented, unless it is missing or malformed (its shape and checksum: no I/O)."""
    if not presented:
        raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer hx-...'.", code="missing_api_key")
    if not keys.is_well_formed(presented):
        raise AuthenticationFailed("Invalid API key.")
    return presented


def principal_from_row(row: tuple[Any, ...] | None, now: float) -> Principal:
    """The principal from PRINCIPAL_COLUMNS' values, or AuthenticationFailed (unknown, revoked or
    expired key)."""
    if row is None:
        raise AuthenticationFailed("Invalid API key.")
    key_id, account_id, expires_at, revoked_at, daily_cap, last_used, prefix, plan, day = row
    if revoked_at is not None:
        raise AuthenticationFailed("This API key has been revoked.", code="revoked_api_key")
    if expires_at is not None and expires_at <= now:
        raise AuthenticationFailed("This API key has expired.", code="expired_api_key")
    return Principal(key_id, account_id, plan, prefix, daily_cap, day, last_used)


def needs_touch(principal: Principal, now: float) -> bool:
    """Whether this request should record the key's use (at most once per LAST_USED_RESOLUTION)."""
    return principal.last_used_at is None or now - principal.last_used_at >= LAST_USED_RESOLUTION


def touch_key(engine: Engine, principal: Principal, *, now: float) -> None:
    """Record use, at most once per LAST_USED_RESOLUTION seconds per key."""
    if not needs_touch(principal, now):
        return
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE api_keys SET last_used_at = :now WHERE id = :kid"), {"now": now, "kid": principal.key_id}
        )
