"""The ledger: the only code that changes a balance.

Model. An account's balance is `allowance + topup` (micro-credits): what is left of today's
allowance plus purchased credits. `held` is the sum of its open holds; `available = balance -
held`. Every change is one conditional UPDATE that cannot overdraw plus one append-only
`ledger_entries` row with a unique `reference`:

    reserve   UPDATE ... WHERE allowance + topup - held >= amount    amount 0,   held_delta +h
    settle    charge = min(charge, hold); allowance first, then topup  amount -c,  held_delta -h
    release   / expire                                                amount 0,   held_delta -h
    grant     topup += x                                              amount +x
    reset     allowance := the plan's daily allowance (once a day)    amount new-old
    plan      allowance adjusted by the change in daily allowance     amount new-old
              (also `reclaim:<hold>`: allowance that open holds kept over a plan change or a
              reset, taken back once a resolved hold no longer needs it; see _reclaim)

Invariants (checked by tests/common/test_ledger_model.py and the PostgreSQL tests):
    balance == sum(entries.amount); held == sum(entries.held_delta) == sum(open holds);
    available >= 0 (also a CHECK constraint); a hold resolves exactly once (status guard plus
    the unique reference `resolve:<hold>`); one reset per account and billing day
    (reference `reset:<account>:<day>`).

Every verb takes a Connection inside the caller's transaction, so a job's state change and its
settlement commit together. A verb that finds its work already done is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from common import credit_refusals
from common.errors import Conflict, InvalidRequest, NotFound
from common.ids import new_id
from common.money import MAX_BALANCE_MICRO, MICRO
from common.plans import daily_allowance_micro, is_plan

# The cap's day never goes back: a reservation whose billing day was read just before midnight (it
# waited for this row's lock, or its host's clock is behind) and that runs after one of the new day
# counts on the new day, rather than resetting the count to its own day. RETURNING: the day it
# counted on, which its hold records.
_CAP_DAY = "(CASE WHEN cap_day IS NOT NULL AND cap_day > :day THEN cap_day ELSE :day END)"
_CAP_USED = f"(CASE WHEN cap_day = {_CAP_DAY} THEN cap_used ELSE 0 END)"
_CAP_RESERVE = text(
    f"UPDATE api_keys SET cap_used = {_CAP_USED} + :amt, cap_day = {_CAP_DAY} WHERE id = :kid"
    f" AND {_CAP_USED} + :amt <= daily_cap RETURNING cap_day"
)
_ACCOUNT_RESERVE = text(
    "UPDATE accounts SET held = held + :amt WHERE id = :aid AND allowance + topup - held >= :amt"
)
_INSERT_HOLD = text(
    "INSERT INTO holds (id, account_id, key_id, amount, status, purpose, key_cap_day, created_at, expires_at)"
    " VALUES (:id, :aid, :kid, :amt, 'open', :purpose, :cap_day, :now, :expires)"
)
_INSERT_ENTRY = text(
    "INSERT INTO ledger_entries (account_id, key_id, kind, amount, held_delta, reference, hold_id,"
    " description, created_at) VALUES (:aid, :kid, :kind, :amount, :held_delta, :ref, :hid, :desc, :now)"
)
_RESOLVE_SET = ("UPDATE holds SET status = :status, charged = CASE WHEN :charge < amount THEN :charge ELSE amount END,"
                " resolved_at = :now WHERE id = :hid AND status = 'open'")
_RESOLVE_RETURNING = " RETURNING account_id, key_id, amount, charged, key_cap_day"
_RESOLVE_HOLD = text(_RESOLVE_SET + _RESOLVE_RETURNING)
# An expiry re-checks the expiry: the hold's call may have moved it on since the sweeper listed it.
_EXPIRE_HOLD = text(_RESOLVE_SET + " AND expires_at < :now" + _RESOLVE_RETURNING)
MAX_REFERENCE_CHARS = 200  # the admin API's limit, for the CLI as well
# The deficit counts only on the billing day it was set for (a reset by an older process, which
# knows nothing of it, leaves it behind): see common.models.Account.
DEFICIT_TODAY = "(CASE WHEN deficit_day = allowance_day THEN allowance_deficit ELSE 0 END)"
_ACCOUNT_SETTLE = text(
    "UPDATE accounts SET"
    " topup = CASE WHEN allowance >= :c THEN topup ELSE topup - (:c - allowance) END,"
    " allowance = CASE WHEN allowance >= :c THEN allowance - :c ELSE 0 END,"
    " held = held - :h WHERE id = :aid RETURNING allowance, topup, held, " + DEFICIT_TODAY
)
_GRANT = text(f"UPDATE accounts SET topup = topup + :amt WHERE id = :aid RETURNING allowance, topup, held, "
              f"{DEFICIT_TODAY}")
_RECLAIM = text(
    "UPDATE accounts SET allowance = allowance - :r, allowance_deficit = allowance_deficit - :r WHERE id = :aid"
)
_CAP_GIVE_BACK = text(
    "UPDATE api_keys SET cap_used = CASE WHEN cap_used >= :amt THEN cap_used - :amt ELSE 0 END"
    " WHERE id = :kid AND cap_day = :day"
)
_SNAPSHOT = text("SELECT plan, allowance, topup, held, allowance_day FROM accounts WHERE id = :aid")
_DEFICIT = text(f"SELECT {DEFICIT_TODAY} FROM accounts WHERE id = :aid")
_LOCKED_SNAPSHOT = text(
    "SELECT plan, allowance, topup, held, allowance_day FROM accounts WHERE id = :aid FOR UPDATE"
)


@dataclass(frozen=True, slots=True)
class Balance:
    plan: str
    allowance: int
    topup: int
    held: int
    allowance_day: str

    @property
    def available(self) -> int:
        return self.allowance + self.topup - self.held


@dataclass(frozen=True, slots=True)
class Settlement:
    hold_id: str
    charged: int  # what this hold cost in the end (0 for a release)
    available: int | None  # the account's available balance right after; None if already resolved
    applied: bool  # False when the hold had already been resolved (a retried call)


def key_cap_left(conn: Connection, key_id: str, day: str) -> int | None:
    """What a key's daily credit cap still allows on billing day `day`; None for an uncapped key."""
    row = conn.execute(text("SELECT daily_cap, cap_used, cap_day FROM api_keys WHERE id = :kid"),
                       {"kid": key_id}).first()
    if row is None or row.daily_cap is None:
        return None
    return cap_left(row.daily_cap, row.cap_used, row.cap_day, day)


def cap_left(daily_cap: int, cap_used: int, cap_day: str | None, day: str) -> int:
    """What a cap leaves on billing day `day`: a use counted on that day or a later one (a request
    held just after midnight, read by one whose day was read just before) counts."""
    return max(0, daily_cap - (cap_used if cap_day is not None and cap_day >= day else 0))


def balance(conn: Connection, account_id: str, *, lock: bool = False) -> Balance:
    """The account's current numbers. `lock` takes a row lock (PostgreSQL) for read-modify-write."""
    stmt = _LOCKED_SNAPSHOT if lock and conn.dialect.name == "postgresql" else _SNAPSHOT
    row = conn.execute(stmt, {"aid": account_id}).first()
    if row is None:
        raise NotFound(f"No account {account_id}", code="account_not_found")
    return Balance(*row)


def reserve(
    conn: Connection,
    *,
    account_id: str,
    key_id: str | None,
    amount: int,
    purpose: str,
    now: float,
    ttl: float,
    cap_day: str | None = None,
) -> str:
    """Hold `amount` micro-credits; returns the hold id or raises InsufficientCredits.

    `cap_day` (the billing day) is given when the key has a daily credit cap: the hold then also
    counts against the cap. On failure nothing is written (the caller's transaction rolls back).
    """
    if amount <= 0:
        raise ValueError("a hold must be positive")
    if cap_day is not None and key_id is not None:
        counted_on = conn.execute(_CAP_RESERVE, {"kid": key_id, "day": cap_day, "amt": amount}).scalar()
        if counted_on is None:
            raise credit_refusals.cap_error(key_cap_left(conn, key_id, cap_day) or 0, amount)
        cap_day = counted_on
    if conn.execute(_ACCOUNT_RESERVE, {"aid": account_id, "amt": amount}).rowcount != 1:
        raise credit_refusals.insufficient_error(balance(conn, account_id), amount)
    hold_id = new_id("hold")
    conn.execute(
        _INSERT_HOLD,
        {"id": hold_id, "aid": account_id, "kid": key_id, "amt": amount, "purpose": purpose,
         "cap_day": cap_day, "now": now, "expires": now + ttl},
    )
    _entry(conn, account_id, key_id, "reserve", 0, amount, f"reserve:{hold_id}", hold_id, purpose, now)
    return hold_id


def settle(conn: Connection, hold_id: str, charge: int, *, now: float, description: str = "",
           day: str | None = None) -> Settlement:
    """Charge at most the hold and release the rest. A second call for the same hold is a no-op.

    With `day` (today's billing day), an account whose allowance is still an earlier day's gets
    its daily reset first: the charge comes out of today's allowance, never the remains of a day
    that is over (the reset otherwise waits for the account's next request)."""
    return _resolve(conn, hold_id, max(0, charge), "settled", "settle", now, description, day)


def release(conn: Connection, hold_id: str, *, now: float, expired: bool = False) -> Settlement:
    """Give the whole hold back (a failed or refunded call, or an expired hold). Idempotent. An
    expiry applies only to a hold still past its expiry (not applied otherwise)."""
    status, kind = ("expired", "expire") if expired else ("released", "release")
    return _resolve(conn, hold_id, 0, status, kind, now, "")


def _resolve(
    conn: Connection, hold_id: str, charge: int, status: str, kind: str, now: float, description: str,
    day: str | None = None,
) -> Settlement:
    statement = _EXPIRE_HOLD if kind == "expire" else _RESOLVE_HOLD
    row = conn.execute(statement, {"hid": hold_id, "status": status, "charge": charge, "now": now}).first()
    if row is None:
        existing = conn.execute(text("SELECT charged FROM holds WHERE id = :hid"), {"hid": hold_id}).first()
        if existing is None:
            raise NotFound(f"No hold {hold_id}", code="hold_not_found")
        return Settlement(hold_id, int(existing[0] or 0), None, applied=False)
    account_id, key_id, amount, charged, cap_day = row
    # The key row before the account row, the order reserve takes them in: the opposite order
    # deadlocks on PostgreSQL when a capped key reserves and settles concurrently.
    if cap_day is not None and key_id is not None and amount > charged:
        conn.execute(_CAP_GIVE_BACK, {"kid": key_id, "day": cap_day, "amt": amount - charged})
    if day is not None and charged > 0:
        ensure_today(conn, account_id, day, now=now)
    allowance, topup, held, deficit = conn.execute(
        _ACCOUNT_SETTLE, {"aid": account_id, "c": charged, "h": amount}
    ).one()
    _entry(conn, account_id, key_id, kind, -charged, -amount, f"resolve:{hold_id}", hold_id, description, now)
    allowance -= _reclaim(conn, account_id, allowance, topup, held, deficit, hold_id, now)
    return Settlement(hold_id, charged, allowance + topup - held, applied=True)


def _reclaim(conn: Connection, account_id: str, allowance: int, topup: int, held: int, deficit: int,
             cause: str, now: float) -> int:
    """Take back allowance that only open holds kept above what the plan leaves for today.

    A downgrade (or a daily reset) cannot cut the allowance below what covers the open holds, and
    records the excess as `allowance_deficit`. Once less of it is needed (a hold resolved, or
    top-up granted, which covers holds too) the excess is taken back here, with its own ledger row
    (`reclaim:<hold or grant>`), as far as the open holds allow. Released holds would otherwise
    leave an account downgraded with 24,000 held keeping 24,000 of allowance on a 1,000-a-day
    plan, and a grant would let it spend that allowance first. Returns what was taken."""
    reclaim = min(deficit, allowance - max(0, held - topup))
    if reclaim <= 0:
        return 0
    conn.execute(_RECLAIM, {"r": reclaim, "aid": account_id})
    _entry(conn, account_id, None, "plan", -reclaim, 0, f"reclaim:{cause}", None,
           "allowance kept for open holds over a plan change or reset, reclaimed", now)
    return reclaim


def usable_reference(reference: str) -> bool:
    """A grant's reference: 1 to MAX_REFERENCE_CHARS characters, not blank (an empty one, an unset
    variable in `--reference "$INVOICE"`, would grant again on a replay)."""
    return bool(reference.strip()) and len(reference) <= MAX_REFERENCE_CHARS


def grant(
    conn: Connection, account_id: str, amount: int, *, now: float, reference: str | None = None,
    description: str = "grant",
) -> bool:
    """Add top-up credits. With a `reference`, a repeated grant is a no-op (returns False); the
    same reference for another amount or account is a Conflict (a typo must not pass as a replay)."""
    if amount <= 0:
        raise InvalidRequest("A grant must be a positive amount of credits.", param="amount")
    if reference is not None and not usable_reference(reference):
        raise InvalidRequest(f"A grant's reference, when given, is 1 to {MAX_REFERENCE_CHARS} characters, "
                             "not blank.", param="reference")
    ref = f"grant:{reference}" if reference is not None else f"grant:{new_id('g')}"
    # The account's row lock first: concurrent grants with one reference then take turns, and the
    # second sees the first's row below (a no-op) instead of failing on the unique reference.
    current = balance(conn, account_id, lock=True)
    if reference is not None:
        earlier = conn.execute(text("SELECT account_id, amount FROM ledger_entries WHERE reference = :r"),
                               {"r": ref}).first()
        if earlier is not None:
            if (earlier.account_id, earlier.amount) != (account_id, amount):
                from common.money import credits_text

                raise Conflict(f"Reference {reference!r} was already used for a grant of "
                               f"{credits_text(earlier.amount)} credits to {earlier.account_id}.",
                               code="reference_reused", param="reference")
            return False
    if current.allowance + current.topup + amount > MAX_BALANCE_MICRO:
        raise InvalidRequest(f"This grant would take the account's balance past {MAX_BALANCE_MICRO // MICRO:,} "
                             "credits, the most an account holds.", code="balance_limit_exceeded", param="amount")
    allowance, topup, held, deficit = conn.execute(_GRANT, {"aid": account_id, "amt": amount}).one()
    try:
        _entry(conn, account_id, None, "grant", amount, 0, ref, None, description, now)
    except IntegrityError:  # the same reference granted to another account at this very moment
        raise Conflict(f"Reference {reference!r} was already used for another grant.", code="reference_reused",
                       param="reference") from None
    _reclaim(conn, account_id, allowance, topup, held, deficit, ref, now)  # top-up now covers open holds too
    return True


def ensure_today(conn: Connection, account_id: str, day: str, *, now: float) -> bool:
    """The daily reset: once per account and billing day. Returns True when it reset.

    The new allowance is the plan's daily allowance, or more when open holds from before the
    boundary need it to keep `available >= 0` (holds are short-lived; this is an edge case). That
    excess is the day's `allowance_deficit`: taken back as those holds resolve (`_reclaim`)."""
    current = balance(conn, account_id, lock=True)
    if current.allowance_day >= day:
        return False
    daily = daily_allowance_micro(current.plan)
    new_allowance = max(daily, current.held - current.topup)
    return _set_allowance(conn, account_id, current, new_allowance, day, "reset", f"reset:{account_id}:{day}", now,
                          deficit=new_allowance - daily)


def change_plan(conn: Connection, account_id: str, plan: str, day: str, *, now: float) -> Balance:
    """Switch plan now: today's allowance moves by the difference of the daily allowances.

    What was used of today's allowance stays used. A downgrade after spending more than the new
    plan's whole day leaves the allowance at zero (never below), and the part it could not take
    back is kept as the account's `allowance_deficit`: an upgrade the same day repays it before
    anything is added, so a round trip (plus -> free -> plus) gives back nothing already spent.
    The daily reset clears it."""
    if not is_plan(plan):
        raise InvalidRequest(f"Unknown plan {plan!r}: use free, plus, pro or ultra.", param="plan")
    ensure_today(conn, account_id, day, now=now)
    current = balance(conn, account_id, lock=True)
    deficit = int(conn.execute(_DEFICIT, {"aid": account_id}).scalar_one())
    # A caller a moment behind (clock skew, another zone) must not move the billing day back:
    # the next ensure_today would then try a second reset of a day already reset.
    day = max(day, current.allowance_day)
    used = max(0, daily_allowance_micro(current.plan) - (current.allowance - deficit))
    owed = daily_allowance_micro(plan) - used  # what is left of the new plan's day (negative: overspent)
    new_allowance = max(0, owed, current.held - current.topup)
    if (plan, new_allowance, day) == (current.plan, current.allowance, current.allowance_day):
        return current  # the same plan again, nothing to move: no ledger row
    conn.execute(text("UPDATE accounts SET plan = :plan WHERE id = :aid"), {"plan": plan, "aid": account_id})
    _set_allowance(conn, account_id, current, new_allowance, day, "plan", f"plan:{new_id('p')}", now,
                   description=f"{current.plan} -> {plan}", deficit=max(0, new_allowance - owed))
    return balance(conn, account_id)


def _set_allowance(
    conn: Connection, account_id: str, current: Balance, new_allowance: int, day: str, kind: str, ref: str,
    now: float, description: str = "", deficit: int = 0,
) -> bool:
    """Set today's allowance (and the deficit: 0 for a daily reset) and write its ledger row."""
    updated = conn.execute(
        text(
            "UPDATE accounts SET allowance = :new, allowance_day = :day, allowance_deficit = :deficit,"
            " deficit_day = :day"
            " WHERE id = :aid AND allowance = :old AND allowance_day = :old_day"
        ),
        {"new": new_allowance, "day": day, "deficit": deficit, "aid": account_id, "old": current.allowance,
         "old_day": current.allowance_day},
    ).rowcount
    if updated != 1:
        return False  # someone else changed it first; their entry covers it
    _entry(conn, account_id, None, kind, new_allowance - current.allowance, 0, ref, None, description, now)
    return True


EXTEND_HOLD = text("UPDATE holds SET expires_at = :until WHERE id = :hid AND status = 'open' RETURNING id")


def extend_hold(conn: Connection, hold_id: str, until: float) -> bool:
    """Move an open hold's expiry to `until` (a call still running); False once it is resolved."""
    return conn.execute(EXTEND_HOLD, {"until": until, "hid": hold_id}).first() is not None


def expire(conn: Connection, hold_id: str, *, now: float) -> Settlement:
    """Release a hold that is still open past its expiry (the sweeper); not applied otherwise.

    Lock order on PostgreSQL (SQLite's BEGIN IMMEDIATE serializes already). A job's hold: its key
    row, then its account row, then the hold, as the job's cancel and failure take them (its
    success takes the account, then the hold, and never the key: its charge is the whole hold), so
    an expiry meeting the job's own transition waits for it. A chat's hold: the hold first, as the
    transactional settlement (common.ledger._resolve) takes it; the one-statement settlement
    (common.ledger_pg.resolve) takes the account first, and PostgreSQL aborts one of the two should
    a chat's settlement meet its hold's expiry (a call that outlived its hold's renewals)."""
    if conn.dialect.name == "postgresql":
        owners = conn.execute(text("SELECT purpose, key_id, account_id FROM holds WHERE id = :hid"),
                              {"hid": hold_id}).first()
        if owners is not None and (owners.purpose or "").startswith("job:"):
            if owners.key_id is not None:
                conn.execute(text("SELECT 1 FROM api_keys WHERE id = :kid FOR UPDATE"), {"kid": owners.key_id})
            conn.execute(text("SELECT 1 FROM accounts WHERE id = :aid FOR UPDATE"), {"aid": owners.account_id})
    return release(conn, hold_id, now=now, expired=True)


def open_expired_holds(conn: Connection, now: float, limit: int = 500) -> list[str]:
    rows = conn.execute(
        text("SELECT id FROM holds WHERE status = 'open' AND expires_at < :now ORDER BY expires_at, id LIMIT :n"),
        {"now": now, "n": limit},
    )
    return [r[0] for r in rows]


def _entry(
    conn: Connection, account_id: str, key_id: str | None, kind: str, amount: int, held_delta: int, ref: str,
    hold_id: str | None, description: str, now: float,
) -> None:
    conn.execute(
        _INSERT_ENTRY,
        {"aid": account_id, "kid": key_id, "kind": kind, "amount": amount, "held_delta": held_delta,
         "ref": ref, "hid": hold_id, "desc": description, "now": now},
    )
