"""The ledger verbs, one by one, on SQLite. After every test the books must balance:
balance == sum(entries.amount), held == sum(entries.held_delta) == sum(open holds), available >= 0."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from common import accounts, billing, clock, ledger
from common.errors import InsufficientCredits, InvalidRequest, NotFound
from common.money import MAX_BALANCE_MICRO, MICRO

DAY = "2026-03-10"
NEXT_DAY = "2026-03-11"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()
C = MICRO  # one credit in micro-credits


# ---------------------------------------------------------------- helpers shared with other ledger tests


def assert_books_balance(conn: Connection) -> None:
    """The ledger's invariants, for every account in the database."""
    rows = conn.execute(text("SELECT id, allowance, topup, held FROM accounts")).all()
    for account_id, allowance, topup, held in rows:
        amount_sum, held_sum = conn.execute(
            text("SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(held_delta), 0) FROM ledger_entries"
                 " WHERE account_id = :a"), {"a": account_id},
        ).one()
        open_sum = conn.execute(
            text("SELECT COALESCE(SUM(amount), 0) FROM holds WHERE account_id = :a AND status = 'open'"),
            {"a": account_id},
        ).scalar_one()
        assert allowance >= 0 and topup >= 0 and held >= 0, (account_id, allowance, topup, held)
        assert allowance + topup == amount_sum, f"{account_id}: balance {allowance + topup} != entries {amount_sum}"
        assert held == held_sum == open_sum, f"{account_id}: held {held}, entries {held_sum}, open holds {open_sum}"
        assert allowance + topup - held >= 0, f"{account_id}: available is negative"


def new_account(engine: Engine, plan: str = "free", day: str = DAY, now: float = NOW) -> str:
    with engine.begin() as conn:
        account_id, _ = accounts.create_account(conn, f"{plan}-{now}-{id(conn)}@example.com", plan, day=day, now=now)
    return account_id


def new_key(engine: Engine, account_id: str, daily_cap: int | None = None) -> str:
    with engine.begin() as conn:
        return accounts.create_key(conn, account_id, name="k", now=NOW, daily_cap=daily_cap).id


def bal(engine: Engine, account_id: str) -> ledger.Balance:
    with engine.connect() as conn:
        return ledger.balance(conn, account_id)


def entries(engine: Engine, account_id: str) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT kind, amount, held_delta, reference, hold_id, key_id FROM ledger_entries"
                 " WHERE account_id = :a ORDER BY id"), {"a": account_id},
        ).all()


def holds(engine: Engine, account_id: str) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT id, amount, status, charged, key_id, purpose, expires_at, key_cap_day FROM holds"
                 " WHERE account_id = :a ORDER BY created_at, id"), {"a": account_id},
        ).all()


def key_cap(engine: Engine, key_id: str) -> tuple[int, str]:
    with engine.connect() as conn:
        used, day = conn.execute(text("SELECT cap_used, cap_day FROM api_keys WHERE id = :k"), {"k": key_id}).one()
    return used, day


def reserve(engine: Engine, account_id: str, amount: int, *, key_id: str | None = None, ttl: float = 900,
            cap_day: str | None = None, now: float = NOW) -> str:
    with engine.begin() as conn:
        return ledger.reserve(conn, account_id=account_id, key_id=key_id, amount=amount, purpose="test",
                              now=now, ttl=ttl, cap_day=cap_day)


def settle(engine: Engine, hold_id: str, charge: int) -> ledger.Settlement:
    with engine.begin() as conn:
        return ledger.settle(conn, hold_id, charge, now=NOW + 1)


def release(engine: Engine, hold_id: str) -> ledger.Settlement:
    with engine.begin() as conn:
        return ledger.release(conn, hold_id, now=NOW + 1)


def grant(engine: Engine, account_id: str, amount: int, reference: str | None = None) -> bool:
    with engine.begin() as conn:
        return ledger.grant(conn, account_id, amount, now=NOW, reference=reference)


def spend(engine: Engine, account_id: str, amount: int) -> None:
    settle(engine, reserve(engine, account_id, amount), amount)


@pytest.fixture(autouse=True)
def books_balance_after_each_test(engine: Engine) -> Iterator[None]:
    yield
    with engine.connect() as conn:
        assert_books_balance(conn)


# ---------------------------------------------------------------- reserve


def test_reserve_writes_a_hold_and_an_entry_and_lowers_available(engine: Engine) -> None:
    account_id = new_account(engine)
    key_id = new_key(engine, account_id)
    hold_id = reserve(engine, account_id, 300 * C, key_id=key_id, ttl=60)

    after = bal(engine, account_id)
    assert (after.allowance, after.topup, after.held, after.available) == (1000 * C, 0, 300 * C, 700 * C)
    [hold] = holds(engine, account_id)
    assert (hold.id, hold.amount, hold.status, hold.charged, hold.key_id) == (hold_id, 300 * C, "open", None, key_id)
    assert hold.expires_at == pytest.approx(NOW + 60)
    last = entries(engine, account_id)[-1]
    assert (last.kind, last.amount, last.held_delta, last.reference, last.hold_id, last.key_id) == (
        "reserve", 0, 300 * C, f"reserve:{hold_id}", hold_id, key_id)


def test_reserve_of_exactly_the_available_amount_succeeds_and_one_more_micro_credit_fails(engine: Engine) -> None:
    account_id = new_account(engine)
    reserve(engine, account_id, 400 * C)
    reserve(engine, account_id, 600 * C)
    assert bal(engine, account_id).available == 0
    with pytest.raises(InsufficientCredits):
        reserve(engine, account_id, 1)


def test_insufficient_reserve_raises_and_writes_nothing(engine: Engine) -> None:
    account_id = new_account(engine)
    key_id = new_key(engine, account_id, daily_cap=5000 * C)
    reserve(engine, account_id, 200 * C, key_id=key_id, cap_day=DAY)
    before = (bal(engine, account_id), entries(engine, account_id), holds(engine, account_id), key_cap(engine, key_id))

    with pytest.raises(InsufficientCredits) as caught:
        reserve(engine, account_id, 800 * C + 1, key_id=key_id, cap_day=DAY)

    assert caught.value.status == 402
    assert "800" in caught.value.message  # says what is left
    after = (bal(engine, account_id), entries(engine, account_id), holds(engine, account_id), key_cap(engine, key_id))
    assert after == before  # no hold, no entry, account and key cap unchanged
    assert key_cap(engine, key_id) == (200 * C, DAY)


def test_a_refusal_says_what_requests_in_progress_hold(engine: Engine) -> None:
    """ "0 are available" alone read as a day's credits spent while concurrent requests held them
    for a few seconds (found by an SDK-breadth review)."""
    account_id = new_account(engine)
    with pytest.raises(InsufficientCredits) as alone:
        reserve(engine, account_id, 1000 * C + 1)
    assert alone.value.message == ("Insufficient credits: this request needs 1000.000001 credits but 1000 are "
                                   "available.")  # nothing held: nothing said of holds
    reserve(engine, account_id, 900 * C)
    with pytest.raises(InsufficientCredits) as busy:
        reserve(engine, account_id, 200 * C)
    assert busy.value.message == (
        "Insufficient credits: this request needs 200 credits but 100 are available (900 more are held for "
        "requests in progress, and come back, less what those are charged, as they finish).")


@pytest.mark.parametrize("amount", [0, -1])
def test_a_hold_must_be_positive(engine: Engine, amount: int) -> None:
    account_id = new_account(engine)
    with pytest.raises(ValueError):
        reserve(engine, account_id, amount)
    assert holds(engine, account_id) == []


def test_reserve_on_an_unknown_account_is_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound):
        reserve(engine, "acct_missing", 1)


# ---------------------------------------------------------------- settle


def test_settle_charges_the_charge_and_releases_the_rest(engine: Engine) -> None:
    account_id = new_account(engine)
    hold_id = reserve(engine, account_id, 300 * C)

    result = settle(engine, hold_id, 120 * C)

    assert result == ledger.Settlement(hold_id, 120 * C, 880 * C, applied=True)
    after = bal(engine, account_id)
    assert (after.allowance, after.topup, after.held) == (880 * C, 0, 0)
    last = entries(engine, account_id)[-1]
    assert (last.kind, last.amount, last.held_delta, last.reference) == ("settle", -120 * C, -300 * C,
                                                                          f"resolve:{hold_id}")
    [hold] = holds(engine, account_id)
    assert (hold.status, hold.charged) == ("settled", 120 * C)


def test_a_charge_above_the_hold_is_clamped_to_the_hold(engine: Engine) -> None:
    account_id = new_account(engine)
    hold_id = reserve(engine, account_id, 100 * C)
    result = settle(engine, hold_id, 500 * C)
    assert result.charged == 100 * C
    assert bal(engine, account_id).allowance == 900 * C
    assert entries(engine, account_id)[-1].amount == -100 * C


def test_a_negative_charge_is_treated_as_zero(engine: Engine) -> None:
    account_id = new_account(engine)
    hold_id = reserve(engine, account_id, 100 * C)
    assert settle(engine, hold_id, -50 * C).charged == 0
    assert bal(engine, account_id).allowance == 1000 * C


def test_allowance_is_spent_before_topup(engine: Engine) -> None:
    account_id = new_account(engine)
    grant(engine, account_id, 500 * C)
    spend(engine, account_id, 400 * C)
    after = bal(engine, account_id)
    assert (after.allowance, after.topup) == (600 * C, 500 * C)


def test_a_charge_larger_than_the_allowance_left_is_split_across_allowance_and_topup(engine: Engine) -> None:
    account_id = new_account(engine)
    grant(engine, account_id, 500 * C)
    spend(engine, account_id, 900 * C)
    hold_id = reserve(engine, account_id, 400 * C)
    assert settle(engine, hold_id, 300 * C).available == 300 * C
    after = bal(engine, account_id)
    assert (after.allowance, after.topup, after.held) == (0, 300 * C, 0)
    assert entries(engine, account_id)[-1].amount == -300 * C


def test_a_retried_settle_is_a_no_op(engine: Engine) -> None:
    account_id = new_account(engine)
    hold_id = reserve(engine, account_id, 300 * C)
    settle(engine, hold_id, 100 * C)
    before = (bal(engine, account_id), entries(engine, account_id))

    again = settle(engine, hold_id, 250 * C)

    assert again == ledger.Settlement(hold_id, 100 * C, None, applied=False)
    assert (bal(engine, account_id), entries(engine, account_id)) == before


def test_settle_after_release_is_a_no_op_and_charges_nothing(engine: Engine) -> None:
    account_id = new_account(engine)
    hold_id = reserve(engine, account_id, 300 * C)
    release(engine, hold_id)
    before = (bal(engine, account_id), entries(engine, account_id))

    late = settle(engine, hold_id, 300 * C)

    assert (late.applied, late.charged) == (False, 0)
    assert (bal(engine, account_id), entries(engine, account_id)) == before
    assert bal(engine, account_id).allowance == 1000 * C


def test_release_after_settle_is_a_no_op(engine: Engine) -> None:
    account_id = new_account(engine)
    hold_id = reserve(engine, account_id, 300 * C)
    settle(engine, hold_id, 300 * C)
    assert release(engine, hold_id).applied is False
    assert bal(engine, account_id).allowance == 700 * C


def test_settle_of_an_unknown_hold_is_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound):
        settle(engine, "hold_missing", 1)


# ---------------------------------------------------------------- release and expiry


def test_release_gives_the_whole_hold_back(engine: Engine) -> None:
    account_id = new_account(engine)
    hold_id = reserve(engine, account_id, 300 * C)
    result = release(engine, hold_id)
    assert result == ledger.Settlement(hold_id, 0, 1000 * C, applied=True)
    last = entries(engine, account_id)[-1]
    assert (last.kind, last.amount, last.held_delta, last.reference) == ("release", 0, -300 * C, f"resolve:{hold_id}")
    assert holds(engine, account_id)[0].status == "released"
    assert release(engine, hold_id).applied is False
    assert len([e for e in entries(engine, account_id) if e.hold_id == hold_id]) == 2


def test_a_hold_extended_after_the_sweeper_listed_it_is_not_expired(engine: Engine,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweeper lists expired holds, then releases them one by one; a call still running (a long
    stream) may move its hold's expiry on in between. The release re-checks the expiry: it used to
    check the status only, and the call, settling later, found its hold gone and charged nothing."""
    account_id = new_account(engine)
    start = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    with clock.frozen(start) as advance:
        hold_id = billing.reserve(engine, account_id=account_id, key_id=None, amount=100 * C, purpose="t", ttl=60,
                                  tz="Asia/Karachi")
        advance(timedelta(seconds=61))
        release = ledger.release

        def extended_then_released(conn: Connection, hid: str, **kwargs: Any) -> ledger.Settlement:
            assert ledger.extend_hold(conn, hid, clock.now().timestamp() + 60)  # the call's keep-alive came first
            return release(conn, hid, **kwargs)

        monkeypatch.setattr(ledger, "release", extended_then_released)
        assert billing.expire_holds(engine) == 0
        assert [h.status for h in holds(engine, account_id)] == ["open"]
        assert billing.settle(engine, hold_id, 40 * C).charged == 40 * C
        assert bal(engine, account_id).held == 0


def test_expire_holds_releases_only_holds_past_their_expiry(engine: Engine) -> None:
    account_id = new_account(engine)
    start = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    with clock.frozen(start) as advance:
        short = billing.reserve(engine, account_id=account_id, key_id=None, amount=100 * C, purpose="t", ttl=60,
                                tz="Asia/Karachi")
        long = billing.reserve(engine, account_id=account_id, key_id=None, amount=200 * C, purpose="t", ttl=600,
                               tz="Asia/Karachi")
        advance(timedelta(seconds=59))
        assert billing.expire_holds(engine) == 0
        advance(timedelta(seconds=2))
        assert billing.expire_holds(engine) == 1
        assert billing.expire_holds(engine) == 0  # nothing left to expire, nothing done twice

        statuses = {h.id: h.status for h in holds(engine, account_id)}
        assert statuses == {short: "expired", long: "open"}
        assert bal(engine, account_id).held == 200 * C
        expired_entry = [e for e in entries(engine, account_id) if e.hold_id == short][-1]
        assert (expired_entry.kind, expired_entry.amount, expired_entry.held_delta) == ("expire", 0, -100 * C)

        late = billing.settle(engine, short, 100 * C)  # the call finished after its hold expired
        assert (late.applied, late.charged) == (False, 0)
        assert billing.settle(engine, long, 150 * C).charged == 150 * C
    assert bal(engine, account_id).allowance == 850 * C


# ---------------------------------------------------------------- grant


def test_grant_adds_topup_and_with_a_reference_is_idempotent(engine: Engine) -> None:
    account_id = new_account(engine)
    assert grant(engine, account_id, 250 * C, reference="order-1") is True
    assert grant(engine, account_id, 250 * C, reference="order-1") is False
    assert bal(engine, account_id).topup == 250 * C
    grants = [e for e in entries(engine, account_id) if e.kind == "grant"]
    assert [(e.amount, e.held_delta, e.reference) for e in grants] == [(250 * C, 0, "grant:order-1")]


def test_a_grant_past_the_most_an_account_holds_is_refused_and_writes_nothing(engine: Engine) -> None:
    account_id = new_account(engine)
    start = bal(engine, account_id)
    assert grant(engine, account_id, MAX_BALANCE_MICRO - start.allowance - start.topup, reference="to-the-top")
    before = entries(engine, account_id)
    with pytest.raises(InvalidRequest) as refused:
        grant(engine, account_id, 1)
    assert (refused.value.code, refused.value.param) == ("balance_limit_exceeded", "amount")
    assert entries(engine, account_id) == before
    assert bal(engine, account_id).allowance + bal(engine, account_id).topup == MAX_BALANCE_MICRO
    assert grant(engine, account_id, MAX_BALANCE_MICRO - start.allowance - start.topup,
                 reference="to-the-top") is False  # a replay is still a no-op, not a refusal


def test_grants_without_a_reference_all_apply(engine: Engine) -> None:
    account_id = new_account(engine)
    assert grant(engine, account_id, 1) and grant(engine, account_id, 1)
    assert bal(engine, account_id).topup == 2
    assert len([e for e in entries(engine, account_id) if e.kind == "grant"]) == 2


@pytest.mark.parametrize("amount", [0, -1, -100 * C])
def test_a_grant_must_be_positive_and_writes_nothing(engine: Engine, amount: int) -> None:
    account_id = new_account(engine)
    before = (bal(engine, account_id), entries(engine, account_id))
    with pytest.raises(InvalidRequest) as caught:
        grant(engine, account_id, amount, reference="r")
    assert caught.value.param == "amount"
    assert (bal(engine, account_id), entries(engine, account_id)) == before
    assert grant(engine, account_id, 5, reference="r") is True  # the refused grant did not burn its reference


def test_a_grant_to_an_unknown_account_is_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound):
        grant(engine, "acct_missing", 5)
