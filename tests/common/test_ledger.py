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
from common.money import MICRO

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


# ---------------------------------------------------------------- plan changes


def change_plan(engine: Engine, account_id: str, plan: str, day: str = DAY) -> ledger.Balance:
    with engine.begin() as conn:
        return ledger.change_plan(conn, account_id, plan, day, now=NOW)


def test_plan_upgrade_mid_day_keeps_what_was_used(engine: Engine) -> None:
    account_id = new_account(engine)
    spend(engine, account_id, 300 * C)
    after = change_plan(engine, account_id, "plus")
    assert (after.plan, after.allowance, after.topup) == ("plus", 4700 * C, 0)
    last = entries(engine, account_id)[-1]
    assert (last.kind, last.amount, last.held_delta) == ("plan", 4000 * C, 0)


def test_plan_downgrade_mid_day_then_upgrade_again_round_trips(engine: Engine) -> None:
    account_id = new_account(engine, "pro")
    spend(engine, account_id, 400 * C)
    assert change_plan(engine, account_id, "free").allowance == 600 * C
    assert change_plan(engine, account_id, "ultra").allowance == 24_600 * C


def test_a_downgrade_past_zero_and_back_up_gives_back_nothing_already_spent(engine: Engine) -> None:
    """plus with 4452 used -> free (allowance 0: 3452 more than the free day was used) -> plus: 548
    left, as before the round trip; not 4000 (the deficit of the downgrade is repaid first)."""
    account_id = new_account(engine, "plus")
    spend(engine, account_id, 4452 * C)
    assert change_plan(engine, account_id, "free").allowance == 0
    assert change_plan(engine, account_id, "plus").allowance == 548 * C
    for _ in range(3):  # however many round trips
        assert change_plan(engine, account_id, "free").allowance == 0
        assert change_plan(engine, account_id, "ultra").allowance == (25_000 - 4452) * C
    assert change_plan(engine, account_id, "plus").allowance == 548 * C
    assert bal(engine, account_id).allowance + 4452 * C == 5000 * C


def test_the_daily_reset_clears_a_plan_changes_deficit(engine: Engine) -> None:
    account_id = new_account(engine, "plus")
    spend(engine, account_id, 4000 * C)
    assert change_plan(engine, account_id, "free").allowance == 0
    assert change_plan(engine, account_id, "plus", day=NEXT_DAY).allowance == 5000 * C  # a new day: all of it


def test_a_hold_kept_by_a_downgrade_counts_as_used_on_the_way_back_up(engine: Engine) -> None:
    account_id = new_account(engine, "pro")
    spend(engine, account_id, 9000 * C)
    hold_id = reserve(engine, account_id, 800 * C)
    assert change_plan(engine, account_id, "free").allowance == 800 * C  # kept for the open hold
    settle(engine, hold_id, 800 * C)
    assert change_plan(engine, account_id, "pro").allowance == 200 * C  # 10000 - 9000 - 800


def test_allowance_kept_for_holds_over_a_downgrade_is_taken_back_as_they_resolve(engine: Engine) -> None:
    """ultra with 24,000 held -> free: the allowance stays 24,000 while the holds need it; as they
    are released it comes back down to the free day's 1,000, each step its own ledger row."""
    account_id = new_account(engine, "ultra")
    holds = [reserve(engine, account_id, 2000 * C) for _ in range(12)]
    after = change_plan(engine, account_id, "free")
    assert (after.allowance, after.held, after.available) == (24_000 * C, 24_000 * C, 0)
    assert release(engine, holds[0]).available == 0  # 22,000 still held: 22,000 kept
    settle(engine, holds[1], 500 * C)  # charged 500 of the allowance; 20,000 still held
    assert bal(engine, account_id).allowance == 20_000 * C
    for hold_id in holds[2:]:
        release(engine, hold_id)
    assert (bal(engine, account_id).allowance, bal(engine, account_id).held) == (500 * C, 0)  # 1,000 - 500
    reclaimed = [e.amount for e in entries(engine, account_id) if e.reference.startswith("reclaim:")]
    assert sum(reclaimed) == -23_000 * C and len(reclaimed) == 12  # the whole deficit, no more
    assert change_plan(engine, account_id, "ultra").allowance == 24_500 * C  # 25,000 - the 500 used


def test_a_grant_under_a_downgrades_kept_allowance_takes_it_back_at_once(engine: Engine) -> None:
    """ultra -> free with 24,000 held keeps 24,000 of allowance for the holds. A grant of 24,000
    top-up covers them too: the kept allowance goes back then, not at the holds' resolution, or
    a new call would be charged to it first (allowance before top-up) and keep it for good."""
    account_id = new_account(engine, "ultra")
    holds = [reserve(engine, account_id, 12_000 * C) for _ in range(2)]
    change_plan(engine, account_id, "free")
    grant(engine, account_id, 24_000 * C)
    after = bal(engine, account_id)
    assert (after.allowance, after.topup, after.available) == (1000 * C, 24_000 * C, 1000 * C)
    spent = reserve(engine, account_id, 1000 * C)  # all that is really available
    settle(engine, spent, 1000 * C)
    for hold_id in holds:
        release(engine, hold_id)
    assert (bal(engine, account_id).allowance, bal(engine, account_id).topup) == (0, 24_000 * C)


def test_a_daily_reset_under_open_holds_takes_the_excess_back_as_they_resolve(engine: Engine) -> None:
    account_id = new_account(engine, "ultra")
    hold_id = reserve(engine, account_id, 20_000 * C)
    change_plan(engine, account_id, "free")
    assert change_plan(engine, account_id, "free", day=NEXT_DAY).allowance == 20_000 * C  # the reset: for the hold
    release(engine, hold_id)
    assert bal(engine, account_id).allowance == 1000 * C


def test_plan_downgrade_never_makes_available_negative(engine: Engine) -> None:
    account_id = new_account(engine, "pro")
    spend(engine, account_id, 9000 * C)
    hold_id = reserve(engine, account_id, 800 * C)  # allowance 1000, held 800

    after = change_plan(engine, account_id, "free")  # used 9000 > 1000: the allowance would be 0

    assert after.allowance == 800 * C  # kept just large enough to cover the open hold
    assert after.available == 0
    assert settle(engine, hold_id, 800 * C).available == 0
    assert bal(engine, account_id).allowance == 0


def test_plan_downgrade_when_the_day_is_used_up_leaves_topup_alone(engine: Engine) -> None:
    account_id = new_account(engine, "plus")
    grant(engine, account_id, 70 * C)
    spend(engine, account_id, 2000 * C)
    after = change_plan(engine, account_id, "free")
    assert (after.allowance, after.topup) == (0, 70 * C)


def test_unknown_plan_is_refused_and_changes_nothing(engine: Engine) -> None:
    account_id = new_account(engine)
    before = (bal(engine, account_id), entries(engine, account_id))
    with pytest.raises(InvalidRequest) as caught:
        change_plan(engine, account_id, "gold")
    assert caught.value.param == "plan"
    assert (bal(engine, account_id), entries(engine, account_id)) == before


def test_plan_change_on_a_new_day_resets_first(engine: Engine) -> None:
    account_id = new_account(engine)
    spend(engine, account_id, 300 * C)
    after = change_plan(engine, account_id, "plus", day=NEXT_DAY)
    assert (after.allowance, after.allowance_day) == (5000 * C, NEXT_DAY)
    assert [e.kind for e in entries(engine, account_id)][-2:] == ["reset", "plan"]


def test_plan_change_with_a_stale_day_never_moves_the_billing_day_back(engine: Engine) -> None:
    """A host whose clock is a moment behind (or a CLI run with another zone) changes the plan with
    yesterday's date after the reset: the next request must not try a second reset of today."""
    account_id = new_account(engine)
    with engine.begin() as conn:
        assert ledger.ensure_today(conn, account_id, NEXT_DAY, now=NOW) is True

    after = change_plan(engine, account_id, "plus", day=DAY)

    assert after.allowance_day == NEXT_DAY
    with engine.begin() as conn:
        assert ledger.ensure_today(conn, account_id, NEXT_DAY, now=NOW) is False
    assert bal(engine, account_id).allowance == 5000 * C
    assert len([e for e in entries(engine, account_id) if e.reference == f"reset:{account_id}:{NEXT_DAY}"]) == 1


# ---------------------------------------------------------------- daily reset


def test_ensure_today_resets_once_per_day(engine: Engine) -> None:
    account_id = new_account(engine)
    grant(engine, account_id, 50 * C)
    spend(engine, account_id, 700 * C)
    with engine.begin() as conn:
        assert ledger.ensure_today(conn, account_id, DAY, now=NOW) is False  # opened today: nothing to do
        assert ledger.ensure_today(conn, account_id, NEXT_DAY, now=NOW) is True
    with engine.begin() as conn:
        assert ledger.ensure_today(conn, account_id, NEXT_DAY, now=NOW) is False
        assert ledger.ensure_today(conn, account_id, DAY, now=NOW) is False  # an older day never resets
    after = bal(engine, account_id)
    assert (after.allowance, after.topup, after.allowance_day) == (1000 * C, 50 * C, NEXT_DAY)
    resets = [e for e in entries(engine, account_id) if e.kind == "reset"]
    assert [(e.amount, e.reference) for e in resets] == [
        (1000 * C, f"reset:{account_id}:{DAY}"), (700 * C, f"reset:{account_id}:{NEXT_DAY}")]


def test_reset_keeps_available_non_negative_with_a_hold_open_across_midnight(engine: Engine) -> None:
    account_id = new_account(engine)
    spend(engine, account_id, 800 * C)
    hold_id = reserve(engine, account_id, 200 * C)
    with engine.begin() as conn:
        ledger.ensure_today(conn, account_id, NEXT_DAY, now=NOW)
    assert bal(engine, account_id).available == 800 * C
    settle(engine, hold_id, 200 * C)  # lands on the new day
    assert bal(engine, account_id).allowance == 800 * C


def test_ensure_today_on_an_unknown_account_is_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound), engine.begin() as conn:
        ledger.ensure_today(conn, "acct_missing", DAY, now=NOW)


# ---------------------------------------------------------------- key daily cap


def test_key_daily_cap_refuses_a_reserve_over_the_cap_and_settle_gives_back_the_unused_part(engine: Engine) -> None:
    account_id = new_account(engine, "plus")
    key_id = new_key(engine, account_id, daily_cap=500 * C)
    first = reserve(engine, account_id, 300 * C, key_id=key_id, cap_day=DAY)
    assert key_cap(engine, key_id) == (300 * C, DAY)

    with pytest.raises(InsufficientCredits) as caught:
        reserve(engine, account_id, 201 * C, key_id=key_id, cap_day=DAY)
    assert caught.value.code == "key_daily_cap_reached"
    assert key_cap(engine, key_id) == (300 * C, DAY)
    assert len(holds(engine, account_id)) == 1

    settle(engine, first, 100 * C)  # 200 unused go back to the cap
    assert key_cap(engine, key_id) == (100 * C, DAY)
    second = reserve(engine, account_id, 400 * C, key_id=key_id, cap_day=DAY)  # exactly up to the cap
    release(engine, second)
    assert key_cap(engine, key_id) == (100 * C, DAY)


def test_key_daily_cap_starts_afresh_each_day_and_old_holds_do_not_touch_the_new_day(engine: Engine) -> None:
    account_id = new_account(engine, "plus")
    key_id = new_key(engine, account_id, daily_cap=500 * C)
    yesterday = reserve(engine, account_id, 450 * C, key_id=key_id, cap_day=DAY)
    today = reserve(engine, account_id, 500 * C, key_id=key_id, cap_day=NEXT_DAY)
    assert key_cap(engine, key_id) == (500 * C, NEXT_DAY)

    release(engine, yesterday)  # gives back to DAY's cap, which is gone: today's cap is untouched
    assert key_cap(engine, key_id) == (500 * C, NEXT_DAY)
    settle(engine, today, 0)
    assert key_cap(engine, key_id) == (0, NEXT_DAY)


def test_a_key_without_a_cap_is_not_capped(engine: Engine) -> None:
    account_id = new_account(engine, "plus")
    key_id = new_key(engine, account_id)
    hold_id = reserve(engine, account_id, 4000 * C, key_id=key_id)  # no cap_day: the key has no cap
    assert key_cap(engine, key_id) == (0, "")
    release(engine, hold_id)
