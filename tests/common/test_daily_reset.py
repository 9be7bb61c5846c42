"""The daily allowance resets at local midnight of HELYX_TIMEZONE (Asia/Karachi by default: 19:00 UTC),
exactly once, however many requests arrive at that instant; top-up credits are untouched."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from threading import Barrier
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from common import billing, clock, ledger
from common.db import make_engine
from common.migrate import upgrade
from common.money import MICRO
from common.settings import Settings
from tests.common.test_ledger import assert_books_balance
from tests.conftest import TestAccount, create_test_account, make_settings

PKT = "Asia/Karachi"
# Frozen times lie in the future: a hold sweeper that reads the real clock never expires the
# holds these tests make.
MIDNIGHT_PKT = datetime(2031, 3, 10, 19, 0, tzinfo=UTC)  # 2031-03-11 00:00 in Karachi


def resets(engine: Engine, account_id: str) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            text("SELECT reference, amount FROM ledger_entries WHERE account_id = :a AND kind = 'reset' ORDER BY id"),
            {"a": account_id},
        )]


def charge(engine: Engine, account: TestAccount, credits: int, tz: str = PKT) -> int:
    hold_id = billing.reserve(engine, account_id=account.account_id, key_id=account.key_id, amount=credits * MICRO,
                              purpose="test", ttl=900, tz=tz)
    return billing.settle(engine, hold_id, credits * MICRO).charged


def entry_time(engine: Engine, account_id: str, kind: str) -> list[float]:
    with engine.connect() as conn:
        return list(conn.execute(
            text("SELECT created_at FROM ledger_entries WHERE account_id = :a AND kind = :k ORDER BY id"),
            {"a": account_id, "k": kind},
        ).scalars())


def all_at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls on as many threads, released together."""
    barrier = Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The product's default zone, named: the tests' own default is a zone near noon."""
    return make_settings(tmp_path, timezone=PKT)


@pytest.fixture(autouse=True)
def books_balance(engine: Engine) -> Iterator[None]:
    yield
    with engine.connect() as conn:
        assert_books_balance(conn)


def test_midnight_pkt_resets_the_allowance_exactly_once(app_client: TestClient, engine: Engine) -> None:
    with clock.frozen(MIDNIGHT_PKT - timedelta(seconds=1)) as advance:
        account = create_test_account(engine, "free", tz=PKT)
        with engine.begin() as conn:
            ledger.grant(conn, account.account_id, 50 * MICRO, now=clock.now().timestamp())
        assert charge(engine, account, 300) == 300 * MICRO  # at 18:59:59 UTC: lands on 2031-03-10
        assert entry_time(engine, account.account_id, "settle") == [(MIDNIGHT_PKT - timedelta(seconds=1)).timestamp()]

        before = app_client.get("/api/v1/credits", headers=account.headers).json()
        assert (before["used_today"], before["allowance_remaining"], before["topup_balance"]) == (300, 700, 50)
        assert before["resets_at"] == "2031-03-10T19:00:00Z"
        assert resets(engine, account.account_id) == [(f"reset:{account.account_id}:2031-03-10", 1000 * MICRO)]

        advance(timedelta(seconds=1))  # 19:00:00 UTC exactly: a new day in Karachi
        api = [lambda: app_client.get("/api/v1/credits", headers=account.headers) for _ in range(8)]
        direct = [lambda: billing.apply_daily_reset(engine, account.account_id, "2031-03-10", PKT)
                  for _ in range(4)]
        results = all_at_once(api + direct)

        assert [r.status_code for r in results[:8]] == [200] * 8
        assert resets(engine, account.account_id) == [
            (f"reset:{account.account_id}:2031-03-10", 1000 * MICRO),
            (f"reset:{account.account_id}:2031-03-11", 300 * MICRO),
        ]
        with engine.connect() as conn:
            after = ledger.balance(conn, account.account_id)
        assert (after.allowance, after.topup, after.held, after.allowance_day) == (
            1000 * MICRO, 50 * MICRO, 0, "2031-03-11")

        now = app_client.get("/api/v1/credits", headers=account.headers).json()
        assert (now["used_today"], now["allowance_remaining"], now["topup_balance"], now["remaining"]) == (
            0, 1000, 50, 1050)
        assert now["resets_at"] == "2031-03-11T19:00:00Z"

        advance(timedelta(seconds=5))
        assert charge(engine, account, 100) == 100 * MICRO  # lands on 2031-03-11
        later = app_client.get("/api/v1/credits", headers=account.headers).json()
        assert (later["used_today"], later["allowance_remaining"], later["topup_balance"]) == (100, 900, 50)
        assert len(resets(engine, account.account_id)) == 2


def test_nothing_resets_a_second_before_midnight(app_client: TestClient, engine: Engine) -> None:
    with clock.frozen(MIDNIGHT_PKT - timedelta(hours=23)) as advance:
        account = create_test_account(engine, "free", tz=PKT)
        charge(engine, account, 400)
        advance(timedelta(hours=23) - timedelta(microseconds=1))  # 18:59:59.999999 UTC
        assert app_client.get("/api/v1/credits", headers=account.headers).json()["allowance_remaining"] == 600
        billing.apply_daily_reset(engine, account.account_id, "2031-03-09", PKT)
        assert len(resets(engine, account.account_id)) == 1


def test_a_hold_open_across_midnight_is_charged_to_the_day_it_settles(engine: Engine) -> None:
    with clock.frozen(MIDNIGHT_PKT - timedelta(seconds=1)) as advance:
        account = create_test_account(engine, "free", tz=PKT)
        charge(engine, account, 900)
        hold_id = billing.reserve(engine, account_id=account.account_id, key_id=account.key_id,
                                  amount=100 * MICRO, purpose="test", ttl=900, tz=PKT)
        advance(timedelta(seconds=2))
        billing.apply_daily_reset(engine, account.account_id, "2031-03-10", PKT)
        assert billing.settle(engine, hold_id, 60 * MICRO).available == 940 * MICRO
        with engine.connect() as conn:
            assert ledger.balance(conn, account.account_id).allowance == 940 * MICRO


@pytest.mark.parametrize(
    ("zone", "boundary"),
    [
        ("UTC", datetime(2031, 3, 11, 0, 0, tzinfo=UTC)),
        ("Asia/Kolkata", datetime(2031, 3, 10, 18, 30, tzinfo=UTC)),  # a half-hour zone
    ],
)
def test_the_zone_is_configurable_and_moves_the_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zone: str, boundary: datetime
) -> None:
    monkeypatch.setenv("HELYX_TIMEZONE", zone)
    settings: Settings = make_settings(tmp_path / zone.replace("/", "_"))
    assert settings.timezone == zone
    engine = make_engine(settings.database_url)
    upgrade(engine)
    from api.app import create_app

    try:
        with TestClient(create_app(settings)) as client, clock.frozen(boundary - timedelta(hours=1)) as advance:
            account = create_test_account(engine, "free", tz=zone)
            charge(engine, account, 250, tz=zone)
            advance(timedelta(minutes=59, seconds=59))  # a second before the configured midnight
            body = client.get("/api/v1/credits", headers=account.headers).json()
            assert (body["allowance_remaining"], body["used_today"]) == (750, 250)
            assert body["resets_at"] == boundary.strftime("%Y-%m-%dT%H:%M:%SZ")
            assert len(resets(engine, account.account_id)) == 1

            advance(timedelta(seconds=1))
            body = client.get("/api/v1/credits", headers=account.headers).json()
            assert (body["allowance_remaining"], body["used_today"]) == (1000, 0)
            assert len(resets(engine, account.account_id)) == 2
            assert body["resets_at"] == (boundary + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            with engine.connect() as conn:
                assert_books_balance(conn)
    finally:
        engine.dispose()


def test_a_utc_day_does_not_reset_at_the_karachi_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELYX_TIMEZONE", "UTC")
    settings = make_settings(tmp_path / "utc")
    engine = make_engine(settings.database_url)
    upgrade(engine)
    from api.app import create_app

    try:
        with TestClient(create_app(settings)) as client, clock.frozen(MIDNIGHT_PKT - timedelta(seconds=1)) as advance:
            account = create_test_account(engine, "free", tz="UTC")
            charge(engine, account, 300, tz="UTC")
            advance(timedelta(seconds=1))  # 19:00 UTC: midnight in Karachi, not in UTC
            body = client.get("/api/v1/credits", headers=account.headers).json()
            assert (body["allowance_remaining"], body["used_today"]) == (700, 300)
            assert len(resets(engine, account.account_id)) == 1
    finally:
        engine.dispose()
