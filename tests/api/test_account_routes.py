"""The caller's own account over HTTP: /credits and /usage (SPEC §4), and the health routes (/keys:
test_key_routes.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from common import accounts, billing, clock, ledger
from common.money import MICRO
from common.settings import Settings
from tests.api.account_helpers import NOON
from tests.conftest import TestAccount, create_test_account, make_settings

PKT = "Asia/Karachi"  # the zone this module's frozen times are reckoned in (the product's default)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, timezone=PKT)


def charge(engine: Engine, account_id: str, key_id: str | None, credits: int) -> None:
    hold_id = billing.reserve(engine, account_id=account_id, key_id=key_id, amount=credits * MICRO, purpose="t",
                              ttl=60, tz=PKT)
    billing.settle(engine, hold_id, credits * MICRO)


# ---------------------------------------------------------------- /credits


def test_credits_of_a_fresh_free_account(app_client: TestClient, engine: Engine) -> None:
    with clock.frozen(NOON):
        account = create_test_account(engine, "free", tz=PKT)
        response = app_client.get("/api/v1/credits", headers=account.headers)
    assert response.status_code == 200
    assert response.json() == {
        "object": "credits",
        "account_id": account.account_id,
        "plan": "free",
        "daily_allowance": 1000,
        "used_today": 0,
        "allowance_remaining": 1000,
        "topup_balance": 0,
        "held": 0,
        "remaining": 1000,
        "resets_at": "2031-03-10T19:00:00Z",
    }


def test_credits_after_spending_granting_and_holding(app_client: TestClient, engine: Engine) -> None:
    with clock.frozen(datetime(2031, 3, 10, 20, 0, tzinfo=UTC)):  # already 2031-03-11 in Karachi
        account = create_test_account(engine, "plus", tz=PKT)
        with engine.begin() as conn:
            ledger.grant(conn, account.account_id, 25 * MICRO + 500_000, now=clock.now().timestamp())
        charge(engine, account.account_id, account.key_id, 1200)
        billing.reserve(engine, account_id=account.account_id, key_id=None, amount=300 * MICRO, purpose="t",
                        ttl=60, tz=PKT)
        body = app_client.get("/api/v1/credits", headers=account.headers).json()
    assert (body["plan"], body["daily_allowance"], body["used_today"], body["allowance_remaining"]) == (
        "plus", 5000, 1200, 3800)
    assert (body["topup_balance"], body["held"], body["remaining"]) == (25.5, 300, 3525.5)
    assert body["resets_at"] == "2031-03-11T19:00:00Z"


def test_used_today_counts_top_up_spending_and_is_not_moved_by_a_plan_change(
        app_client: TestClient, engine: Engine) -> None:
    """used_today is what was charged since the billing day began, whatever paid for it."""
    with clock.frozen(datetime(2031, 3, 10, 20, 0, tzinfo=UTC)) as advance:  # 01:00 on 2031-03-11 in Karachi
        account = create_test_account(engine, "pro", tz=PKT)
        with engine.begin() as conn:
            ledger.grant(conn, account.account_id, 5000 * MICRO, now=clock.now().timestamp())
        charge(engine, account.account_id, account.key_id, 1824)

        def credits() -> dict[str, Any]:
            return app_client.get("/api/v1/credits", headers=account.headers).json()  # type: ignore[no-any-return]

        assert (credits()["used_today"], credits()["allowance_remaining"]) == (1824, 8176)
        for plan in ("free", "pro"):  # a round trip moves the allowance, not what was used
            with engine.begin() as conn:
                ledger.change_plan(conn, account.account_id, plan, billing.today(PKT),
                                   now=clock.now().timestamp())
            assert credits()["used_today"] == 1824
        left = credits()["allowance_remaining"]
        charge(engine, account.account_id, account.key_id, int(left) + 300)  # the allowance, then 300 of top-up
        body = credits()
        assert (body["used_today"], body["allowance_remaining"], body["topup_balance"]) == (
            1824 + left + 300, 0, 4700)
        advance(timedelta(hours=23))  # 00:00 on 2031-03-12 in Karachi: a new billing day
        assert credits()["used_today"] == 0


# ---------------------------------------------------------------- /usage


@pytest.fixture
def busy_account(engine: Engine) -> tuple[TestAccount, str, list[float]]:
    """An account with entries from two keys and grants, one second apart; returns the second key and
    the times at which each batch was written."""
    account = create_test_account(engine, "plus", tz=PKT)
    with engine.begin() as conn:
        second_key = accounts.create_key(conn, account.account_id, name="second", now=NOON.timestamp()).id
    times = []
    with clock.frozen(NOON) as advance:
        for i in range(4):
            advance(timedelta(seconds=10))
            times.append(clock.now().timestamp())
            charge(engine, account.account_id, account.key_id, 10 + i)  # reserve + settle: 2 entries
            charge(engine, account.account_id, second_key, 1)
            with engine.begin() as conn:
                ledger.grant(conn, account.account_id, MICRO, now=clock.now().timestamp())
    return account, second_key, times


def all_pages(client: TestClient, headers: dict[str, str], query: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        url = f"/api/v1/usage?limit={limit}{query}" + (f"&after={cursor}" if cursor is not None else "")
        page = client.get(url, headers=headers).json()
        assert page["object"] == "list"
        assert len(page["data"]) <= limit
        items += page["data"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return items
        assert len(page["data"]) == limit
        cursor = page["next_cursor"]
        assert cursor == page["data"][-1]["id"]
    raise AssertionError("pagination never ended")


def test_usage_pages_through_every_entry_newest_first(
    app_client: TestClient, engine: Engine, busy_account: tuple[TestAccount, str, list[float]]
) -> None:
    account, _, _ = busy_account
    with engine.connect() as conn:
        expected = list(conn.execute(text("SELECT id FROM ledger_entries WHERE account_id = :a ORDER BY id DESC"),
                                     {"a": account.account_id}).scalars())
    assert len(expected) == 1 + 4 * 5

    first = app_client.get("/api/v1/usage?limit=3", headers=account.headers).json()
    assert (len(first["data"]), first["has_more"]) == (3, True)
    assert first["data"][0]["id"] == expected[0]

    items = all_pages(app_client, account.headers, "", 3)
    assert [i["id"] for i in items] == expected
    assert sum(i["credits"] for i in items) == 5000 - (10 + 11 + 12 + 13) - 4 + 4  # the balance
    assert items[-1]["kind"] == "reset"
    assert {i["kind"] for i in items} == {"reset", "reserve", "settle", "grant"}
    default = app_client.get("/api/v1/usage", headers=account.headers).json()
    assert (len(default["data"]), default["has_more"]) == (21, False)


def test_usage_filters_by_key_and_time(
    app_client: TestClient, busy_account: tuple[TestAccount, str, list[float]]
) -> None:
    account, second_key, times = busy_account
    mine = all_pages(app_client, account.headers, f"&key_id={account.key_id}", 2)
    assert len(mine) == 8 and {i["key_id"] for i in mine} == {account.key_id}
    theirs = all_pages(app_client, account.headers, f"&key_id={second_key}", 50)
    assert len(theirs) == 8 and {i["key_id"] for i in theirs} == {second_key}

    window = all_pages(app_client, account.headers, f"&since={times[1]}&until={times[3]}", 2)
    assert len(window) == 10  # batches 2 and 3: since is inclusive, until exclusive
    assert all(times[1] <= i["created_at"] < times[3] for i in window)

    both = all_pages(app_client, account.headers, f"&key_id={second_key}&since={times[3]}", 50)
    assert len(both) == 2


def test_usage_never_shows_another_account(
    app_client: TestClient, engine: Engine, busy_account: tuple[TestAccount, str, list[float]]
) -> None:
    account, _, _ = busy_account
    other = create_test_account(engine, "free", tz=PKT)
    foreign = app_client.get(f"/api/v1/usage?key_id={account.key_id}", headers=other.headers)
    assert foreign.status_code == 404  # another account's key reads as unknown, not as "no usage"
    assert foreign.json()["error"] == {"message": f"No API key {account.key_id}", "type": "not_found_error",
                                       "code": "key_not_found", "param": "key_id"}
    assert app_client.get("/api/v1/usage?key_id=key_0000", headers=other.headers).json()["error"]["code"] == (
        "key_not_found")
    page = app_client.get("/api/v1/usage", headers=other.headers).json()
    assert [i["kind"] for i in page["data"]] == ["reset"]


# ---------------------------------------------------------------- health


def test_healthz_and_readyz(app_client: TestClient) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}
    ready = app_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_the_probes_answer_head_as_load_balancers_send_it(app_client: TestClient, path: str) -> None:
    """A monitor probing with HEAD got 405 and reported the service down (an operator review)."""
    probe = app_client.head(path)
    assert probe.status_code == 200 and probe.content == b""


def test_readyz_is_503_when_the_database_cannot_be_opened(app_client: TestClient, tmp_path: Path) -> None:
    from common.db import make_engine

    (tmp_path / "a-directory.db").mkdir()
    broken = make_engine(f"sqlite:///{tmp_path / 'a-directory.db'}")
    services = app_client.app.state.services  # type: ignore[attr-defined]
    healthy, services.engine = services.engine, broken
    try:
        assert app_client.get("/healthz").status_code == 200  # alive, though not ready
        ready = app_client.get("/readyz")
    finally:
        services.engine = healthy
        broken.dispose()
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["checks"]["database"].startswith("error")
    error = ready.json()["error"]  # the envelope every error has (SPEC §2), beside the checks
    assert (error["type"], error["code"], error["param"]) == ("server_error", "service_unavailable", None), error
    assert error["message"].startswith("Not ready: database: error") and "broker" not in error["message"], error
    assert app_client.get("/readyz").status_code == 200
