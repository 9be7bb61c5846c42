"""The one-statement PostgreSQL verbs (common.ledger_pg) move money exactly like the transactional
verbs of common.ledger: the same random sequence runs through both (PostgreSQL and SQLite) and
every step ends in the same numbers, with the ledger invariants holding throughout. The verbs run
in both their forms: on the thread path's connections (common.pg_statements) and on the API's
event loop (common.pg_async)."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import pytest
from sqlalchemy import Engine, text

from common import ledger, ledger_pg, pg_statements
from common.money import MICRO
from common.pg_async import AsyncStatements
from tests.conftest import create_test_account

TODAY = "2031-03-11"


class Verbs(Protocol):
    def reserve(self, **kw: Any) -> str | None: ...
    def resolve(self, hold_id: str, charge: int, **kw: Any) -> ledger.Settlement | None: ...


class ThreadForm:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def reserve(self, **kw: Any) -> str | None:
        with pg_statements.connection(self.engine) as pg:
            return ledger_pg.reserve(pg, **kw)

    def resolve(self, hold_id: str, charge: int, **kw: Any) -> ledger.Settlement | None:
        with pg_statements.connection(self.engine) as pg:
            return ledger_pg.resolve(pg, hold_id, charge, **kw)


class LoopForm:
    """The async verbs on one event loop that lives across the calls, as the API's does."""

    def __init__(self, engine: Engine) -> None:
        self.runner = asyncio.Runner()
        pg = AsyncStatements.for_engine(engine)
        assert pg is not None
        self.pg = pg

    def reserve(self, **kw: Any) -> str | None:
        async def run() -> str | None:
            async with self.pg.connection() as conn:
                return await ledger_pg.reserve_async(conn, **kw)
        return self.runner.run(run())

    def resolve(self, hold_id: str, charge: int, **kw: Any) -> ledger.Settlement | None:
        async def run() -> ledger.Settlement | None:
            async with self.pg.connection() as conn:
                return await ledger_pg.resolve_async(conn, hold_id, charge, **kw)
        return self.runner.run(run())

    def close(self) -> None:
        self.runner.run(self.pg.close_idle())
        self.runner.close()


@pytest.fixture(params=["thread", "loop"])
def verbs(request: pytest.FixtureRequest, pg_engine: Engine) -> Iterator[Verbs]:
    if request.param == "thread":
        yield ThreadForm(pg_engine)
        return
    form = LoopForm(pg_engine)
    yield form
    form.close()


def _numbers(engine: Engine, account_id: str) -> tuple[int, int, int, int, int, int]:
    with engine.connect() as conn:
        allowance, topup, held = conn.execute(text("SELECT allowance, topup, held FROM accounts WHERE id = :a"),
                                              {"a": account_id}).one()
        amount, held_delta = conn.execute(text("SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(held_delta), 0)"
                                               " FROM ledger_entries WHERE account_id = :a"), {"a": account_id}).one()
        open_holds = conn.execute(text("SELECT COALESCE(SUM(amount), 0) FROM holds WHERE account_id = :a"
                                       " AND status = 'open'"), {"a": account_id}).scalar_one()
    assert allowance + topup == amount and held == held_delta == open_holds and allowance + topup - held >= 0
    return allowance, topup, held, amount, held_delta, open_holds


def _account_on(engine: Engine, plan: str, day: str) -> Any:
    """A test account whose allowance is `day`'s (the billing day the statements are given)."""
    account = create_test_account(engine, plan)
    with engine.begin() as conn:
        conn.execute(text("UPDATE accounts SET allowance_day = :d WHERE id = :a"), {"d": day, "a": account.account_id})
    return account


def _generation(i: int, key_id: str) -> dict[str, object]:
    return {"gid": f"gen-{i}", "gkid": key_id, "model": "m", "stream": False, "gstatus": "succeeded", "pt": 1,
            "ct": 1, "est": False, "lat": 1, "err": None, "created": 1.0}


def test_one_statement_verbs_match_the_transactional_ones(pg_engine: Engine, engine: Engine, verbs: Verbs) -> None:
    pg_account = create_test_account(pg_engine, "free")
    lite_account = create_test_account(engine, "free")
    for eng, acct in ((pg_engine, pg_account), (engine, lite_account)):
        with eng.begin() as conn:
            ledger.grant(conn, acct.account_id, 300 * MICRO, now=1.0)
    rng = random.Random(20261122)
    open_pg: list[str] = []
    open_lite: list[str] = []
    recorded = {"count": 0, "credits": 0}  # the settlements that carried a generation record
    for step in range(400):
        if not open_pg or rng.random() < 0.55:
            amount = rng.randint(1, 400) * MICRO // 4 + rng.randint(0, 999)
            pg_hold = verbs.reserve(account_id=pg_account.account_id, key_id=pg_account.key_id, amount=amount,
                                    purpose="t", now=2.0, ttl=600)
            try:
                with engine.begin() as conn:
                    lite_hold: str | None = ledger.reserve(conn, account_id=lite_account.account_id,
                                                           key_id=lite_account.key_id, amount=amount, purpose="t",
                                                           now=2.0, ttl=600)
            except Exception:  # noqa: BLE001 - InsufficientCredits: compared below
                lite_hold = None
            assert (pg_hold is None) == (lite_hold is None), step
            if pg_hold and lite_hold:
                open_pg.append(pg_hold)
                open_lite.append(lite_hold)
        else:
            index = rng.randrange(len(open_pg))
            pg_hold, lite_hold = open_pg.pop(index), open_lite.pop(index)
            charge = rng.choice([0, rng.randint(1, 3 * MICRO), 10**12])  # nothing, some, more than held
            record = _generation(step, pg_account.key_id) if step % 2 else None  # chat's form, then billing's
            settled = verbs.resolve(pg_hold, charge, now=3.0, description="d", generation=record)
            again = verbs.resolve(pg_hold, charge, now=3.0, description="d", generation=record)
            with engine.begin() as conn:
                expected = (ledger.settle(conn, lite_hold, charge, now=3.0) if charge
                            else ledger.release(conn, lite_hold, now=3.0))
            assert settled is not None and again is None
            if record is not None:
                recorded["count"] += 1
                recorded["credits"] += settled.charged
            assert (settled.charged, settled.available) == (expected.charged, expected.available), step
        assert _numbers(pg_engine, pg_account.account_id) == _numbers(engine, lite_account.account_id), step
    with pg_engine.connect() as conn:
        generations = conn.execute(text("SELECT COUNT(*), COALESCE(SUM(credits), 0) FROM generations"
                                        " WHERE account_id = :a"), {"a": pg_account.account_id}).one()
    assert (generations[0], generations[1]) == (recorded["count"], recorded["credits"])
    assert recorded["count"] > 25


def test_a_capped_hold_is_left_to_the_transactional_verb(pg_engine: Engine, verbs: Verbs) -> None:
    account = create_test_account(pg_engine, "free")
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET daily_cap = :c WHERE id = :k"), {"c": 100 * MICRO, "k": account.key_id})
        hold = ledger.reserve(conn, account_id=account.account_id, key_id=account.key_id, amount=10 * MICRO,
                              purpose="t", now=1.0, ttl=60, cap_day="2026-11-22")
    assert verbs.resolve(hold, MICRO, now=2.0, description="d", generation=_generation(1, account.key_id)) is None
    assert verbs.resolve(hold, MICRO, now=2.0, description="d") is None
    with pg_engine.begin() as conn:
        assert ledger.settle(conn, hold, MICRO, now=2.0).applied
    _numbers(pg_engine, account.account_id)


def test_a_settlement_after_the_day_ended_charges_todays_allowance_not_the_remains_of_yesterdays(
        pg_engine: Engine, verbs: Verbs) -> None:
    """Free plan, 1,000 a day; 700 used yesterday; a 100 hold made yesterday settles today before
    the account's first request of the day (the reset is lazy): today's allowance pays."""
    account = create_test_account(pg_engine, "free")
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE accounts SET allowance_day = '2031-03-10' WHERE id = :a"), {"a": account.account_id})
        hold = ledger.reserve(conn, account_id=account.account_id, key_id=None, amount=700 * MICRO, purpose="t",
                              now=1.0, ttl=600)
        ledger.settle(conn, hold, 700 * MICRO, now=1.0)
        late = ledger.reserve(conn, account_id=account.account_id, key_id=None, amount=100 * MICRO, purpose="t",
                              now=1.0, ttl=600)
    # with today's day the one statement stands aside (it cannot run the reset) and changes nothing
    assert verbs.resolve(late, 60 * MICRO, now=2.0, description="d", day="2031-03-11") is None
    assert _numbers(pg_engine, account.account_id)[:3] == (300 * MICRO, 0, 100 * MICRO)
    with pg_engine.begin() as conn:
        settled = ledger.settle(conn, late, 60 * MICRO, now=2.0, day="2031-03-11")
        kinds = conn.execute(text("SELECT kind, amount FROM ledger_entries WHERE account_id = :a ORDER BY id"),
                             {"a": account.account_id}).all()
    assert settled.applied and settled.charged == 60 * MICRO and settled.available == 940 * MICRO
    assert _numbers(pg_engine, account.account_id)[:3] == (940 * MICRO, 0, 0)
    assert [k for k, _ in kinds][-2:] == ["reset", "settle"] and kinds[-2][1] == 700 * MICRO


@pytest.mark.parametrize("day", [None, "2031-03-11"])
def test_an_account_with_an_allowance_deficit_is_left_to_the_transactional_verb(
        pg_engine: Engine, verbs: Verbs, day: str | None) -> None:
    """Downgraded under open holds (ultra -> free with 2,400 held): the one statement stands aside,
    changing nothing, and the transactional verb releases the hold and takes back the allowance it
    kept, with its own ledger row."""
    account = _account_on(pg_engine, "ultra", "2031-03-11")
    hold = verbs.reserve(account_id=account.account_id, key_id=None, amount=24_000 * MICRO, purpose="t", now=1.0,
                         ttl=600)
    assert hold is not None
    with pg_engine.begin() as conn:
        assert ledger.change_plan(conn, account.account_id, "free", "2031-03-11", now=1.5).allowance == 24_000 * MICRO
    before = _numbers(pg_engine, account.account_id)
    assert verbs.resolve(hold, 0, now=2.0, description="", kind="release", day=day) is None
    assert _numbers(pg_engine, account.account_id) == before
    with pg_engine.begin() as conn:
        released = ledger.release(conn, hold, now=2.0)
    assert released.applied and released.available == 1000 * MICRO
    assert _numbers(pg_engine, account.account_id)[:3] == (1000 * MICRO, 0, 0)


def test_a_settlement_on_the_allowances_own_day_stays_one_statement(pg_engine: Engine, verbs: Verbs) -> None:
    account = _account_on(pg_engine, "free", "2031-03-11")
    hold = verbs.reserve(account_id=account.account_id, key_id=None, amount=100 * MICRO, purpose="t", now=1.0,
                         ttl=600)
    assert hold is not None
    settled = verbs.resolve(hold, 60 * MICRO, now=2.0, description="d", day="2031-03-11")
    assert settled is not None and settled.charged == 60 * MICRO and settled.available == 940 * MICRO


def test_a_chat_reservation_commits_unflushed_and_leaves_the_connection_synchronous(pg_engine: Engine) -> None:
    """The async (chat) reservation sets synchronous_commit off for its own transaction only:
    inside an explicit transaction the setting is visible after the statement; the connection's
    own setting is still on afterwards, so the settlement that follows commits durably."""
    account = create_test_account(pg_engine, "free")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, 10 * MICRO, now=1.0)
    form = LoopForm(pg_engine)

    async def run() -> tuple[str, str, str, str | None]:
        async with form.pg.connection() as conn:
            kw = {"account_id": account.account_id, "key_id": account.key_id, "amount": MICRO, "purpose": "t",
                  "now": 2.0, "ttl": 600}
            async with conn.transaction():
                hold = await ledger_pg.reserve_async(conn, **kw)
                inside = (await (await conn.execute("SHOW synchronous_commit")).fetchone())[0]  # type: ignore[index]
            after_tx = (await (await conn.execute("SHOW synchronous_commit")).fetchone())[0]  # type: ignore[index]
            second = await ledger_pg.reserve_async(conn, **kw)  # autocommit, as the API runs it
            after = (await (await conn.execute("SHOW synchronous_commit")).fetchone())[0]  # type: ignore[index]
            assert hold is not None
            return inside, after_tx, after, second

    try:
        inside, after_tx, after, second = form.runner.run(run())
    finally:
        form.close()
    assert (inside, after_tx, after) == ("off", "on", "on")
    assert second is not None
    assert _numbers(pg_engine, account.account_id)[2] == 2 * MICRO  # both holds written


def test_a_chat_reservation_does_not_wait_for_a_wal_flush_and_a_settlement_does(pg_engine: Engine) -> None:
    """Counted by PostgreSQL itself (WAL flushes to disk: pg_stat_wal.wal_sync, in pg_stat_io from
    PostgreSQL 18): fifty chat reservations in a row flush (almost) never, fifty settlements flush
    about once each."""
    account = create_test_account(pg_engine, "free")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, 1000 * MICRO, now=1.0)
        if conn.execute(text("SHOW fsync")).scalar() != "on" or conn.execute(
                text("SHOW synchronous_commit")).scalar() == "off":
            pytest.skip("this server does not flush commits at all")
        version = int(conn.execute(text("SHOW server_version_num")).scalar_one())
    if version < 150000:
        pytest.skip("a backend's statistics are flushed on demand (pg_stat_force_next_flush) from PostgreSQL 15")
    flushes = ("SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_io WHERE object = 'wal'" if version >= 180000
               else "SELECT wal_sync FROM pg_stat_wal")
    form = LoopForm(pg_engine)
    count = 50

    async def syncs(conn: Any) -> int:
        await conn.execute("SELECT pg_stat_force_next_flush()")  # this backend's counters, flushed when idle
        return int((await (await conn.execute(flushes)).fetchone())[0])

    async def run() -> tuple[int, int]:
        kw = {"account_id": account.account_id, "key_id": account.key_id, "amount": MICRO, "purpose": "t",
              "now": 2.0, "ttl": 600}
        async with form.pg.connection() as conn:
            start = await syncs(conn)
            holds = [await ledger_pg.reserve_async(conn, **kw) for _ in range(count)]
            reserved = await syncs(conn)
            for hold in holds:
                assert hold is not None
                await ledger_pg.resolve_async(conn, hold, MICRO // 2, now=3.0, description="t")
            settled = await syncs(conn)
        return reserved - start, settled - reserved

    try:
        reserving, settling = form.runner.run(run())
    finally:
        form.close()
    assert reserving <= count // 5, (reserving, settling)  # the WAL writer's own few, and others' activity
    assert settling >= count * 4 // 5, (reserving, settling)
    assert _numbers(pg_engine, account.account_id)[2] == 0  # every hold settled


def test_a_settlement_racing_a_plan_change_still_takes_back_what_holds_kept(pg_engine: Engine, verbs: Verbs) -> None:
    """plus with 5,000 held; the downgrade to free is under way (its transaction holds the account
    row) when the one-statement release starts. It must see the downgrade's deficit once the row is
    free (and stand aside for the transactional verb), not release on the row as it was before."""
    account, day = _account_on(pg_engine, "plus", TODAY), TODAY
    with pg_engine.begin() as conn:
        hold = ledger.reserve(conn, account_id=account.account_id, key_id=None, amount=5000 * MICRO, purpose="t",
                              now=1.0, ttl=600)
    results: list[ledger.Settlement | None] = []
    with pg_engine.connect() as downgrading:
        transaction = downgrading.begin()
        ledger.change_plan(downgrading, account.account_id, "free", day, now=1.5)  # the row stays locked
        racer = threading.Thread(target=lambda: results.append(
            verbs.resolve(hold, 0, now=2.0, description="", kind="release", day=day)))
        racer.start()
        racer.join(0.5)
        assert racer.is_alive()  # waiting for the account row
        transaction.commit()
    racer.join(10)
    assert results == [None]  # stood aside: the account now has a deficit
    with pg_engine.begin() as conn:
        assert ledger.release(conn, hold, now=2.0).available == 1000 * MICRO
    assert _numbers(pg_engine, account.account_id)[:3] == (1000 * MICRO, 0, 0)


def test_a_deficit_left_by_a_reset_that_knew_nothing_of_it_is_ignored(pg_engine: Engine) -> None:
    """A rolling upgrade: a process from before migration 0002 resets the day and leaves
    yesterday's deficit behind. It is yesterday's: today's allowance is not taken for it."""
    account, day = _account_on(pg_engine, "plus", TODAY), TODAY
    with pg_engine.begin() as conn:
        spent = ledger.reserve(conn, account_id=account.account_id, key_id=None, amount=4000 * MICRO, purpose="t",
                               now=1.0, ttl=600)
        ledger.settle(conn, spent, 4000 * MICRO, now=1.0)
        ledger.change_plan(conn, account.account_id, "free", day, now=1.0)  # overspent: allowance 0, deficit 3,000
        old_reset = {"a": account.account_id, "day": "2099-01-01", "ref": f"reset:{account.account_id}:2099-01-01"}
        conn.execute(text("UPDATE accounts SET allowance = 1000000000, allowance_day = :day WHERE id = :a"), old_reset)
        conn.execute(text("INSERT INTO ledger_entries (account_id, kind, amount, held_delta, reference, description,"
                          " created_at) VALUES (:a, 'reset', 1000000000, 0, :ref, '', 2.0)"), old_reset)
        hold = ledger.reserve(conn, account_id=account.account_id, key_id=None, amount=10 * MICRO, purpose="t",
                              now=2.0, ttl=600)
        assert ledger.release(conn, hold, now=3.0).available == 1000 * MICRO
        assert ledger.change_plan(conn, account.account_id, "plus", "2099-01-01", now=3.0).allowance == 5000 * MICRO
    _numbers(pg_engine, account.account_id)
