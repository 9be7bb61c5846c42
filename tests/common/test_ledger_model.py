"""The ledger against a plain Python model of its rules, step by step (hypothesis stateful testing).

The model knows the rules of SPEC §3 and common/ledger.py's docstring: today's allowance is spent
before top-up, a charge never exceeds its hold, a hold resolves once, one reset per billing day,
a plan change moves today's allowance by the difference of the daily allowances (what it cannot
take back, or what open holds keep, is a deficit: an upgrade repays it, a resolved hold gives back
what it no longer needs), a key's daily cap counts holds of its day. After every step the database
must equal the model, and the books must balance.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import Engine, text

from common import accounts, billing, clock, ledger
from common.db import make_engine
from common.errors import Conflict, InsufficientCredits, InvalidRequest
from common.migrate import upgrade
from common.money import MICRO
from common.plans import PLANS, daily_allowance_micro
from tests.common.test_ledger import assert_books_balance

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()
FIRST_DAY = date(2026, 3, 10)
CAP = 1_500 * MICRO
TABLES = ("ledger_entries", "holds", "api_keys", "accounts")

amounts = st.one_of(st.integers(1, 3_000).map(lambda c: c * MICRO), st.integers(1, 3_000 * MICRO))


@dataclass
class ModelHold:
    amount: int
    key: str | None
    cap_day: str | None
    expires_at: float
    status: str = "open"
    charged: int | None = None


@dataclass
class Model:
    plan: str
    allowance: int
    day: str
    topup: int = 0
    allowance_day: str = ""
    holds: dict[str, ModelHold] = field(default_factory=dict)
    grant_refs: dict[str, int] = field(default_factory=dict)  # reference -> amount
    cap_used: int = 0
    cap_day: str = ""
    entries: int = 1  # the opening allowance
    deficit: int = 0  # what today's plan changes could not take back (a downgrade past zero)

    @property
    def held(self) -> int:
        return sum(h.amount for h in self.holds.values() if h.status == "open")

    @property
    def available(self) -> int:
        return self.allowance + self.topup - self.held

    def ensure_today(self, day: str) -> bool:
        if self.allowance_day >= day:
            return False
        self.allowance = max(daily_allowance_micro(self.plan), self.held - self.topup)
        self.allowance_day = day
        self.deficit = self.allowance - daily_allowance_micro(self.plan)  # kept only for open holds
        self.entries += 1
        return True

    def resolve(self, hold_id: str, charge: int, status: str) -> tuple[bool, int]:
        hold = self.holds[hold_id]
        if hold.status != "open":
            return False, hold.charged or 0
        charge = min(max(0, charge), hold.amount)
        from_allowance = min(self.allowance, charge)
        self.allowance -= from_allowance
        self.topup -= charge - from_allowance
        hold.status, hold.charged = status, charge
        if hold.cap_day is not None and hold.cap_day == self.cap_day and hold.amount > charge:
            self.cap_used = max(0, self.cap_used - (hold.amount - charge))
        self.entries += 1
        self.reclaim()
        return True, charge

    def reclaim(self) -> None:
        """Allowance kept only for open holds, no longer needed, goes back (common.ledger._reclaim)."""
        taken = min(self.deficit, self.allowance - max(0, self.held - self.topup))
        if taken > 0:
            self.allowance -= taken
            self.deficit -= taken
            self.entries += 1


class LedgerMachine(RuleBasedStateMachine):
    engine: Engine  # set by the test: one migrated SQLite file, emptied for every example
    runs = 0

    def __init__(self) -> None:
        super().__init__()
        LedgerMachine.runs += 1
        with self.engine.begin() as conn:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
        self.now = START
        self.day_index = 0
        self.hold_ids: list[str] = []

    @property
    def day(self) -> str:
        return (FIRST_DAY + timedelta(days=self.day_index)).isoformat()

    @initialize(plan=st.sampled_from(PLANS))
    def open_account(self, plan: str) -> None:
        with self.engine.begin() as conn:
            self.account_id, first = accounts.create_account(conn, "model@example.com", plan, day=self.day,
                                                             now=self.now)
            self.capped_key = accounts.create_key(conn, self.account_id, name="capped", now=self.now,
                                                  daily_cap=CAP).id
            # A bystander whose numbers no step may touch.
            self.bystander, _ = accounts.create_account(conn, "bystander@example.com", "plus", day=self.day,
                                                        now=self.now)
        self.plain_key = first.id
        self.model = Model(plan=plan, allowance=daily_allowance_micro(plan), day=self.day, allowance_day=self.day)

    # ------------------------------------------------------------ reserve

    def _reserve(self, amount: int, capped: bool, ttl: float) -> None:
        m = self.model
        key = self.capped_key if capped else self.plain_key
        cap_day = self.day if capped else None
        cap_used_today = m.cap_used if m.cap_day == self.day else 0
        if capped and cap_used_today + amount > CAP:
            expected: str | None = "key_daily_cap_reached"
        elif m.available < amount:
            expected = "insufficient_quota"
        else:
            expected = None
        try:
            with self.engine.begin() as conn:
                hold_id = ledger.reserve(conn, account_id=self.account_id, key_id=key, amount=amount,
                                         purpose="model", now=self.now, ttl=ttl, cap_day=cap_day)
        except InsufficientCredits as exc:
            assert exc.code == expected, f"refused with {exc.code}, the model expected {expected}"
            return
        assert expected is None, f"reserve of {amount} succeeded, the model expected {expected}"
        m.holds[hold_id] = ModelHold(amount, key, cap_day, self.now + ttl)
        if capped:
            m.cap_used, m.cap_day = cap_used_today + amount, self.day
        m.entries += 1
        self.hold_ids.append(hold_id)

    @rule(amount=amounts, capped=st.booleans(), ttl=st.sampled_from([30.0, 600.0, 7200.0]))
    def reserve(self, amount: int, capped: bool, ttl: float) -> None:
        self._reserve(amount, capped, ttl)

    @precondition(lambda self: self.model.available > 0)
    @rule(extra=st.sampled_from([0, 1]))
    def reserve_exactly_what_is_available_or_one_more(self, extra: int) -> None:
        self._reserve(self.model.available + extra, False, 600.0)

    # ------------------------------------------------------------ settle and release

    @precondition(lambda self: self.hold_ids)
    @rule(data=st.data(), fraction=st.sampled_from([0, 1, 2, 3, 4, 8]), retry=st.booleans())
    def settle(self, data: st.DataObject, fraction: int, retry: bool) -> None:
        """Charge a fraction (in quarters, so 8 is twice the hold: clamped) of a hold, maybe twice."""
        hold_id = data.draw(st.sampled_from(self.hold_ids))
        charge = self.model.holds[hold_id].amount * fraction // 4
        for _ in range(2 if retry else 1):
            with self.engine.begin() as conn:
                result = ledger.settle(conn, hold_id, charge, now=self.now)
            applied, charged = self.model.resolve(hold_id, charge, "settled")
            assert (result.applied, result.charged) == (applied, charged)
            assert result.available == (self.model.available if applied else None)

    @precondition(lambda self: self.hold_ids)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        hold_id = data.draw(st.sampled_from(self.hold_ids))
        with self.engine.begin() as conn:
            result = ledger.release(conn, hold_id, now=self.now)
        applied, charged = self.model.resolve(hold_id, 0, "released")
        assert (result.applied, result.charged) == (applied, charged)

    @rule()
    def expire_holds(self) -> None:
        expected = [h for h in self.model.holds.values() if h.status == "open" and h.expires_at < self.now]
        with clock.frozen(datetime.fromtimestamp(self.now, UTC)):
            released = billing.expire_holds(self.engine)
        assert released == len(expected)
        # in the sweep's order, oldest expiry first (each expiry may take back allowance kept for the
        # holds, with an entry of its own: the order decides how many)
        for hold_id, hold in sorted(self.model.holds.items(), key=lambda item: (item[1].expires_at, item[0])):
            if hold in expected:
                self.model.resolve(hold_id, 0, "expired")

    # ------------------------------------------------------------ grants, plans, days, time

    @rule(amount=amounts, reference=st.sampled_from([None, "order-1", "order-2"]))
    def grant(self, amount: int, reference: str | None) -> None:
        earlier = self.model.grant_refs.get(reference) if reference else None
        if earlier is not None and earlier != amount:  # the reference reused for another amount
            with pytest.raises(Conflict), self.engine.begin() as conn:
                ledger.grant(conn, self.account_id, amount, now=self.now, reference=reference)
            return
        with self.engine.begin() as conn:
            applied = ledger.grant(conn, self.account_id, amount, now=self.now, reference=reference)
        assert applied == (earlier is None)
        if earlier is None:
            self.model.topup += amount
            self.model.entries += 1
            if reference:
                self.model.grant_refs[reference] = amount
            self.model.reclaim()  # top-up now covers open holds too

    @rule(amount=st.integers(-10 * MICRO, 0))
    def grant_nothing_is_refused(self, amount: int) -> None:
        try:
            with self.engine.begin() as conn:
                ledger.grant(conn, self.account_id, amount, now=self.now, reference="order-3")
        except InvalidRequest:
            return
        raise AssertionError(f"a grant of {amount} was accepted")

    @rule(plan=st.sampled_from(PLANS), stale=st.booleans())
    def change_plan(self, plan: str, stale: bool) -> None:
        """`stale`: the caller's clock is a day behind (another host, another zone)."""
        day = (FIRST_DAY + timedelta(days=max(0, self.day_index - 1))).isoformat() if stale else self.day
        with self.engine.begin() as conn:
            after = ledger.change_plan(conn, self.account_id, plan, day, now=self.now)
        m = self.model
        m.ensure_today(day)
        used = max(0, daily_allowance_micro(m.plan) - (m.allowance - m.deficit))
        owed = daily_allowance_micro(plan) - used
        allowance = max(0, owed, m.held - m.topup)
        moved = (plan, allowance, max(day, m.allowance_day)) != (m.plan, m.allowance, m.allowance_day)
        m.entries += moved
        if moved:
            m.deficit = max(0, allowance - owed)
        m.allowance, m.plan, m.allowance_day = allowance, plan, max(day, m.allowance_day)
        assert (after.plan, after.allowance, after.allowance_day) == (m.plan, m.allowance, m.allowance_day)

    @precondition(lambda self: self.model.available > 0 and self.model.plan != "free")
    @rule(plan=st.sampled_from(["free", "plus"]))
    def downgrade_with_everything_held(self, plan: str) -> None:
        """The case that leaves allowance kept only for open holds (a deficit): hypothesis seldom
        strings it together from the single steps."""
        self._reserve(self.model.available, False, 600.0)
        self.change_plan(plan, stale=False)

    @rule(days=st.integers(1, 2))
    def next_day(self, days: int) -> None:
        self.day_index += days
        self.now += days * 86_400
        self.model.day = self.day

    @rule(twice=st.booleans())
    def daily_reset(self, twice: bool) -> None:
        for _ in range(2 if twice else 1):
            with self.engine.begin() as conn:
                did = ledger.ensure_today(conn, self.account_id, self.day, now=self.now)
            assert did == self.model.ensure_today(self.day)

    @rule(seconds=st.sampled_from([1.0, 29.0, 31.0, 599.0, 3600.0]))
    def advance_clock(self, seconds: float) -> None:
        self.now += seconds

    # ------------------------------------------------------------ after every step

    @invariant()
    def database_equals_model(self) -> None:
        if not hasattr(self, "model"):
            return
        m = self.model
        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT plan, allowance, topup, held, allowance_day, allowance_deficit FROM accounts"
                     " WHERE id = :a"),
                {"a": self.account_id},
            ).one()
            assert tuple(row) == (m.plan, m.allowance, m.topup, m.held, m.allowance_day, m.deficit)
            # No allowance beyond what the plan leaves for today, except what open holds need now:
            # kept allowance no longer needed is never left to be spent.
            kept = m.allowance - max(0, m.allowance - m.deficit)
            assert kept <= max(0, m.held - m.topup), (m.allowance, m.deficit, m.held, m.topup)
            open_holds = dict(conn.execute(
                text("SELECT id, amount FROM holds WHERE account_id = :a AND status = 'open'"),
                {"a": self.account_id},
            ).all())
            assert open_holds == {i: h.amount for i, h in m.holds.items() if h.status == "open"}
            statuses = dict(conn.execute(text("SELECT id, status FROM holds WHERE account_id = :a"),
                                         {"a": self.account_id}).all())
            assert statuses == {i: h.status for i, h in m.holds.items()}
            cap = conn.execute(text("SELECT cap_used, cap_day FROM api_keys WHERE id = :k"),
                               {"k": self.capped_key}).one()
            assert tuple(cap) == (m.cap_used, m.cap_day)
            count = conn.execute(text("SELECT COUNT(*) FROM ledger_entries WHERE account_id = :a"),
                                 {"a": self.account_id}).scalar_one()
            assert count == m.entries, "an entry too many or too few"
            bystander = conn.execute(text("SELECT allowance, topup, held FROM accounts WHERE id = :a"),
                                     {"a": self.bystander}).one()
            assert tuple(bystander) == (daily_allowance_micro("plus"), 0, 0)
            assert_books_balance(conn)
        assert m.available >= 0


@pytest.fixture
def model_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'model.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def test_the_ledger_behaves_like_its_model(model_engine: Engine) -> None:
    examples = 300 if CI else 60
    LedgerMachine.engine, LedgerMachine.runs = model_engine, 0
    machine_test = LedgerMachine.TestCase
    machine_test.settings = settings(max_examples=examples, stateful_step_count=20, deadline=None)
    machine_test("runTest").runTest()
    assert LedgerMachine.runs >= examples
