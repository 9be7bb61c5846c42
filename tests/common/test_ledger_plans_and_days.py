"""The ledger's plan changes, daily resets and key daily caps, on SQLite; after every test the books must
balance, as in test_ledger."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from common import ledger
from common.errors import InsufficientCredits, InvalidRequest, NotFound
from tests.common.test_ledger import (
    DAY,
    NEXT_DAY,
    NOW,
    C,
    bal,
    books_balance_after_each_test,  # noqa: F401 (autouse here too)
    entries,
    grant,
    holds,
    key_cap,
    new_account,
    new_key,
    release,
    reserve,
    settle,
    spend,
)


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


def test_a_reserve_that_read_yesterday_after_one_of_today_counts_on_today_and_never_turns_the_cap_back(
        engine: Engine) -> None:
    """A reservation whose billing day was read just before midnight (it waited for the key's lock,
    or its host's clock is behind) ran after one of the new day: it set the cap back to its own
    day and count, forgetting both days' spending, so both days went over the cap."""
    account_id = new_account(engine, "plus")
    key_id = new_key(engine, account_id, daily_cap=3000 * C)
    grant(engine, account_id, 100_000 * C)  # the balance is never what refuses here
    reserve(engine, account_id, 2900 * C, key_id=key_id, cap_day=DAY)
    reserve(engine, account_id, 100 * C, key_id=key_id, cap_day=NEXT_DAY)
    with pytest.raises(InsufficientCredits) as caught:  # 2,900 left on the new day: 2,000 fit
        reserve(engine, account_id, 2950 * C, key_id=key_id, cap_day=DAY)
    assert caught.value.code == "key_daily_cap_reached" and "2900" in caught.value.message.replace(",", "")
    late = reserve(engine, account_id, 2000 * C, key_id=key_id, cap_day=DAY)
    assert key_cap(engine, key_id) == (2100 * C, NEXT_DAY)  # counted on the new day
    assert next(h for h in holds(engine, account_id) if h.id == late).key_cap_day == NEXT_DAY
    with pytest.raises(InsufficientCredits):
        reserve(engine, account_id, 950 * C, key_id=key_id, cap_day=NEXT_DAY)
    release(engine, late)  # gives back to the day it counted on
    assert key_cap(engine, key_id) == (100 * C, NEXT_DAY)


def test_a_key_without_a_cap_is_not_capped(engine: Engine) -> None:
    account_id = new_account(engine, "plus")
    key_id = new_key(engine, account_id)
    hold_id = reserve(engine, account_id, 4000 * C, key_id=key_id)  # no cap_day: the key has no cap
    assert key_cap(engine, key_id) == (0, "")
    release(engine, hold_id)
