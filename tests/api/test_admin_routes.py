"""Operator routes behind HELYX_ADMIN_TOKEN: accounts, plans, grants (SPEC §4, §6)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from common import billing, clock
from common.money import MICRO
from tests.common.test_ledger import assert_books_balance
from tests.conftest import ADMIN_TOKEN, TEST_TZ, TestAccount, make_settings

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def count(engine: Engine, table: str, where: str = "1 = 1", **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table} WHERE {where}"), params).scalar_one())


def create(client: TestClient, email: str, plan: str | None = None) -> dict[str, Any]:
    body = {"email": email} if plan is None else {"email": email, "plan": plan}
    response = client.post("/admin/accounts", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the guard


ROUTES = [("get", "/admin/accounts"), ("post", "/admin/accounts"), ("post", "/admin/accounts/acct_x/plan"),
          ("post", "/admin/accounts/acct_x/credits"), ("post", "/admin/accounts/acct_x/keys"),
          ("delete", "/admin/keys/key_x")]
BAD_CREDENTIALS = [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
                   {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"}, {"Authorization": ADMIN_TOKEN},
                   {"Authorization": f"Basic {ADMIN_TOKEN}"}]


def test_admin_routes_need_the_token(app_client: TestClient, engine: Engine) -> None:
    for method, path in ROUTES:
        for headers in BAD_CREDENTIALS:
            kwargs: dict[str, Any] = {"json": {"email": "x@example.com", "plan": "pro", "amount": 5}} \
                if method == "post" else {}
            response = getattr(app_client, method)(path, headers=headers, **kwargs)
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["type"] == "authentication_error"
            assert response.headers["x-should-retry"] == "false"
    assert count(engine, "accounts") == 0


def test_a_user_api_key_is_not_an_admin_token(app_client: TestClient, account: TestAccount) -> None:
    assert app_client.get("/admin/accounts", headers=account.headers).status_code == 401


def test_without_a_configured_token_the_admin_routes_do_not_exist(tmp_path: Path) -> None:
    from api.app import create_app
    from common.db import make_engine
    from common.migrate import upgrade

    settings = make_settings(tmp_path, admin_token=None)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    try:
        with TestClient(create_app(settings)) as client:
            for headers in ({}, ADMIN, {"Authorization": "Bearer "}):
                listed = client.get("/admin/accounts", headers=headers)
                created = client.post("/admin/accounts", json={"email": "a@example.com"}, headers=headers)
                unparsable = client.post("/admin/accounts", content=b"xx", headers=headers)
                wrong_method = client.get("/admin/accounts/acct_x/plan", headers=headers)
                for response in (listed, created, unparsable, wrong_method):
                    assert response.status_code == 404, response.text
                    assert response.json()["error"]["type"] == "not_found_error"
        assert count(engine, "accounts") == 0
    finally:
        engine.dispose()


def test_an_unknown_admin_path_names_the_admin_routes_in_the_same_words_on_or_off(
        app_client: TestClient, tmp_path: Path) -> None:
    """An operator's typo under /admin was answered with the list of /api/v1 routes. The 404 now
    names the admin routes and the setting that serves them, in words that do not say whether the
    admin API is on (its routes are absent when it is off, as any unknown path)."""
    from api.app import create_app

    on = app_client.get("/admin/acounts", headers=ADMIN)
    with TestClient(create_app(make_settings(tmp_path, admin_token=None))) as client:
        off = client.get("/admin/acounts", headers=ADMIN)
    for response in (on, off):
        error = response.json()["error"]
        assert (response.status_code, error["code"]) == (404, "unknown_route"), response.text
        assert "GET /admin/acounts" in error["message"] and "/admin/accounts/{id}/credits" in error["message"]
        assert "HELYX_ADMIN_TOKEN" in error["message"] and "/api/v1/chat/completions" not in error["message"]
    assert on.json() == off.json()


# ---------------------------------------------------------------- accounts


def test_create_an_account_whose_key_works(app_client: TestClient, engine: Engine) -> None:
    body = create(app_client, "new@example.com", "plus")
    assert body["account_id"].startswith("acct_") and body["api_key"].startswith("hx-") and body["plan"] == "plus"
    credits = app_client.get("/api/v1/credits", headers={"Authorization": f"Bearer {body['api_key']}"})
    assert credits.status_code == 200
    assert (credits.json()["account_id"], credits.json()["plan"], credits.json()["remaining"]) == (
        body["account_id"], "plus", 5000)
    assert count(engine, "api_keys", "id = :k AND account_id = :a", k=body["key_id"], a=body["account_id"]) == 1


def test_plan_defaults_to_free(app_client: TestClient) -> None:
    body = create(app_client, "default@example.com")
    assert body["plan"] == "free"
    credits = app_client.get("/api/v1/credits", headers={"Authorization": f"Bearer {body['api_key']}"}).json()
    assert (credits["plan"], credits["daily_allowance"]) == ("free", 1000)


def test_duplicate_email_is_409_and_creates_nothing(app_client: TestClient, engine: Engine) -> None:
    create(app_client, "twice@example.com")
    response = app_client.post("/admin/accounts", json={"email": "twice@example.com", "plan": "pro"}, headers=ADMIN)
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "conflict_error"
    assert response.headers["x-should-retry"] == "false"
    assert count(engine, "accounts") == 1 and count(engine, "api_keys") == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"email": "a@example.com", "plan": "gold"}, "plan"),
        ({"email": "a@example.com", "plan": "FREE"}, "plan"),
        ({"email": "a@example.com", "plan": None}, "plan"),
        ({"email": "not-an-email", "plan": "free"}, "email"),
        ({"email": "", "plan": "free"}, "email"),
        ({"plan": "free"}, "email"),
        ({"email": 12345, "plan": "free"}, "email"),
        ({"email": "a\u0007@b\r\nX-Injected: 1", "plan": "free"}, "email"),  # control characters
        ({"email": "a b@example.com", "plan": "free"}, "email"),
        ({"email": "@example.com", "plan": "free"}, "email"),
        ({"email": "a@", "plan": "free"}, "email"),
        ({"email": "a@b@example.com", "plan": "free"}, "email"),
    ],
)
def test_bad_account_input_is_400_with_param_and_creates_nothing(
    app_client: TestClient, engine: Engine, body: dict[str, Any], param: str
) -> None:
    response = app_client.post("/admin/accounts", json=body, headers=ADMIN)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert count(engine, "accounts") == 0
    assert count(engine, "ledger_entries") == 0


def test_list_accounts_pages_through_every_account_oldest_first(app_client: TestClient,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    created = [create(app_client, f"user{i}@example.com", "free")["account_id"] for i in range(7)]
    seen: list[str] = []
    after = None
    for _ in range(10):
        query = "limit=3" + (f"&after={after}" if after else "")
        page = app_client.get(f"/admin/accounts?{query}", headers=ADMIN).json()
        assert len(page["data"]) <= 3
        seen += [a["id"] for a in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        after = page["next_cursor"]
        assert after == page["data"][-1]["id"]
        if len(seen) == 3:  # an account made during the walk whose id sorts first: listed on a later page
            monkeypatch.setattr("common.accounts.new_id", lambda prefix: f"{prefix}_0000late")
            created.append(create(app_client, "late@example.com", "free")["account_id"])
            monkeypatch.undo()
    assert seen == created and created[-1] == "acct_0000late"
    first = app_client.get("/admin/accounts?limit=1", headers=ADMIN).json()["data"][0]
    assert set(first) >= {"id", "email", "plan", "allowance_remaining", "topup_balance", "held", "created_at"}
    for bad in ("limit=0", "limit=1001", "limit=x", "after="):  # an empty cursor restarted from the top: a loop
        response = app_client.get(f"/admin/accounts?{bad}", headers=ADMIN)
        assert (response.status_code, response.json()["error"]["param"]) == (400, bad.split("=")[0])
    unknown = app_client.get("/admin/accounts?after=zzz", headers=ADMIN)  # never a silent empty page
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (404, "after"), unknown.text


def test_the_list_shows_todays_allowance_before_an_accounts_first_request_of_the_day(
        app_client: TestClient, engine: Engine) -> None:
    """As GET /credits does: the allowance row resets lazily, on the account's first request."""
    with clock.frozen(datetime(2031, 3, 10, 23, 0, tzinfo=ZoneInfo(TEST_TZ))) as advance:  # 23:00 where billed
        account = create(app_client, "spent@example.com", "free")
        hold = billing.reserve(engine, account_id=account["account_id"], key_id=account["key_id"],
                               amount=1000 * MICRO, purpose="chat:x", ttl=60, tz=TEST_TZ)
        billing.settle(engine, hold, 1000 * MICRO)
        listed = app_client.get("/admin/accounts", headers=ADMIN).json()["data"]
        assert [a["allowance_remaining"] for a in listed] == [0]
        advance(timedelta(hours=2))  # 01:00: a new billing day, no request of the account yet
        listed = app_client.get("/admin/accounts", headers=ADMIN).json()["data"]
        credits = app_client.get("/api/v1/credits", headers={"Authorization": f"Bearer {account['api_key']}"}).json()
    assert [a["allowance_remaining"] for a in listed] == [credits["allowance_remaining"]] == [1000]


# ---------------------------------------------------------------- plans


def test_set_plan_changes_today_allowance(app_client: TestClient, engine: Engine) -> None:
    body = create(app_client, "upgrade@example.com", "free")
    hold_id = billing.reserve(engine, account_id=body["account_id"], key_id=None, amount=250 * MICRO, purpose="t",
                              ttl=60, tz=TEST_TZ)
    billing.settle(engine, hold_id, 250 * MICRO)
    response = app_client.post(f"/admin/accounts/{body['account_id']}/plan", json={"plan": "pro"}, headers=ADMIN)
    assert response.status_code == 200
    summary = response.json()
    assert (summary["plan"], summary["daily_allowance"], summary["used_today"], summary["remaining"]) == (
        "pro", 10_000, 250, 9_750)
    user = app_client.get("/api/v1/credits", headers={"Authorization": f"Bearer {body['api_key']}"}).json()
    assert (user["plan"], user["remaining"]) == ("pro", 9_750)
    with engine.connect() as conn:
        assert_books_balance(conn)


def test_set_plan_refuses_bad_input_and_unknown_accounts(app_client: TestClient, engine: Engine) -> None:
    body = create(app_client, "stay@example.com", "plus")
    entries = count(engine, "ledger_entries")
    for payload in ({"plan": "platinum"}, {}, {"plan": 3}):
        response = app_client.post(f"/admin/accounts/{body['account_id']}/plan", json=payload, headers=ADMIN)
        assert (response.status_code, response.json()["error"]["param"]) == (400, "plan")
    missing = app_client.post("/admin/accounts/acct_missing/plan", json={"plan": "pro"}, headers=ADMIN)
    assert missing.status_code == 404
    assert count(engine, "ledger_entries") == entries
    assert count(engine, "accounts", "plan = 'plus'") == 1


# ---------------------------------------------------------------- grants


def test_grant_credits_is_idempotent_with_a_reference(app_client: TestClient, engine: Engine) -> None:
    body = create(app_client, "grant@example.com")
    url = f"/admin/accounts/{body['account_id']}/credits"
    first = app_client.post(url, json={"amount": 12.5, "reference": "invoice-7"}, headers=ADMIN)
    again = app_client.post(url, json={"amount": 12.5, "reference": "invoice-7"}, headers=ADMIN)
    assert (first.status_code, first.json()["granted"], first.json()["topup_balance"]) == (200, True, 12.5)
    assert (again.status_code, again.json()["granted"], again.json()["topup_balance"]) == (200, False, 12.5)
    plain = app_client.post(url, json={"amount": 0.000001}, headers=ADMIN).json()
    assert (plain["granted"], plain["topup_balance"]) == (True, 12.500001)
    assert count(engine, "ledger_entries", "kind = 'grant'") == 2
    with engine.connect() as conn:
        topup = conn.execute(text("SELECT topup FROM accounts WHERE id = :a"), {"a": body["account_id"]}).scalar_one()
        assert_books_balance(conn)
    assert topup == 12_500_001


def test_an_idempotency_key_makes_a_grant_sent_again_grant_once(app_client: TestClient, engine: Engine) -> None:
    """An operator's script that sends the grant again after a lost answer: the header is the reference."""
    body = create(app_client, "idem-grant@example.com")
    url = f"/admin/accounts/{body['account_id']}/credits"
    keyed = {**ADMIN, "Idempotency-Key": "top-up-2026-12-07"}
    first = app_client.post(url, json={"amount": 7}, headers=keyed)
    again = app_client.post(url, json={"amount": 7}, headers=keyed)
    both = app_client.post(url, json={"amount": 7, "reference": "top-up-2026-12-07"}, headers=keyed)
    assert [(r.status_code, r.json()["granted"], r.json()["topup_balance"]) for r in (first, again, both)] == [
        (200, True, 7), (200, False, 7), (200, False, 7)]
    other_amount = app_client.post(url, json={"amount": 8}, headers=keyed)
    assert other_amount.status_code == 409
    assert (other_amount.json()["error"]["code"], other_amount.json()["error"]["param"]) == (
        "reference_reused", "reference")
    with engine.connect() as conn:
        refs = conn.execute(text("SELECT reference FROM ledger_entries WHERE kind = 'grant'")).scalars().all()
        assert_books_balance(conn)
    assert refs == ["grant:top-up-2026-12-07"]


@pytest.mark.parametrize(("key", "reference"), [("", None), ("  ", None), ("k" * 201, None), ("one", "another")])
def test_a_bad_idempotency_key_on_a_grant_is_400_and_grants_nothing(
        app_client: TestClient, engine: Engine, key: str, reference: str | None) -> None:
    body = create(app_client, "idem-bad@example.com")
    payload: dict[str, Any] = {"amount": 5} if reference is None else {"amount": 5, "reference": reference}
    response = app_client.post(f"/admin/accounts/{body['account_id']}/credits", json=payload,
                               headers={**ADMIN, "Idempotency-Key": key})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "Idempotency-Key"
    assert count(engine, "ledger_entries", "kind = 'grant'") == 0
    assert count(engine, "accounts", "topup = 0") == 1


@pytest.mark.parametrize(
    "payload",
    [{"amount": 0}, {"amount": -5}, {"amount": "lots"}, {"amount": None}, {}, {"amount": 10**10},
     {"amount": 0.0000001}, {"amount": 5, "reference": "r" * 201}, {"amount": 5, "reference": ""},
     {"amount": 5, "reference": " "}],
)
def test_bad_grants_are_400_and_write_no_ledger_entry(app_client: TestClient, engine: Engine,
                                                      payload: dict[str, Any]) -> None:
    body = create(app_client, "nogrant@example.com")
    entries = count(engine, "ledger_entries")
    response = app_client.post(f"/admin/accounts/{body['account_id']}/credits", json=payload, headers=ADMIN)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] in ("amount", "reference")
    assert count(engine, "ledger_entries") == entries
    assert count(engine, "accounts", "topup = 0") == 1


def test_grant_to_an_unknown_account_is_404(app_client: TestClient, engine: Engine) -> None:
    response = app_client.post("/admin/accounts/acct_missing/credits", json={"amount": 5}, headers=ADMIN)
    assert response.status_code == 404
    assert count(engine, "ledger_entries") == 0


# ---------------------------------------------------------------- keys


def test_an_account_that_revoked_its_every_key_gets_a_new_one_from_the_operator(
        app_client: TestClient, engine: Engine) -> None:
    body = create(app_client, "lockedout@example.com", "plus")
    own = {"Authorization": f"Bearer {body['api_key']}"}
    assert app_client.delete(f"/api/v1/keys/{body['key_id']}", headers=own).status_code == 200
    assert app_client.get("/api/v1/credits", headers=own).status_code == 401  # no key left
    made = app_client.post(f"/admin/accounts/{body['account_id']}/keys", headers=ADMIN,
                           json={"name": "recovery", "daily_credit_cap": 12.5, "expires_at": 4_000_000_000})
    assert made.status_code == 201, made.text
    key = made.json()
    assert key["object"] == "api_key" and key["key"].startswith("hx-") and key["name"] == "recovery"
    assert key["daily_credit_cap"] == key["daily_credit_cap_remaining"] == 12.5
    assert key["expires_at"] == 4_000_000_000 and key["key"].startswith(key["prefix"])
    new = {"Authorization": f"Bearer {key['key']}"}
    assert app_client.get("/api/v1/credits", headers=new).json()["plan"] == "plus"
    listed = app_client.get("/api/v1/keys", headers=new).json()["data"]
    assert [k["id"] for k in listed if k["revoked_at"] is None] == [key["id"]]
    assert count(engine, "api_keys", "account_id = :a", a=body["account_id"]) == 2
    assert app_client.post(f"/admin/accounts/{body['account_id']}/keys", headers=ADMIN).status_code == 201  # no body


def test_the_operator_revokes_any_accounts_key(app_client: TestClient) -> None:
    body = create(app_client, "leaked@example.com")
    own = {"Authorization": f"Bearer {body['api_key']}"}
    assert app_client.get("/api/v1/credits", headers=own).status_code == 200
    revoked = app_client.delete(f"/admin/keys/{body['key_id']}", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json() == {"id": body["key_id"], "object": "api_key",
                                                             "revoked": True}
    assert app_client.get("/api/v1/credits", headers=own).json()["error"]["code"] == "revoked_api_key"
    assert app_client.delete(f"/admin/keys/{body['key_id']}", headers=ADMIN).status_code == 200  # twice: harmless
    missing = app_client.delete("/admin/keys/key_missing", headers=ADMIN)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "key_not_found"


@pytest.mark.parametrize("payload, param", [
    ({"name": None}, "name"), ({"name": "x" * 101}, "name"), ({"name": "a\tb"}, "name"),
    ({"daily_credit_cap": 0}, "daily_credit_cap"), ({"daily_credit_cap": -1}, "daily_credit_cap"),
    ({"daily_credit_cap": "5"}, "daily_credit_cap"), ({"expires_at": 1.0}, "expires_at"),
    ({"expires_in": 3600}, "expires_in"),
])
def test_bad_key_input_is_400_with_param_and_makes_no_key(app_client: TestClient, engine: Engine,
                                                          payload: dict[str, Any], param: str) -> None:
    body = create(app_client, "badkey@example.com")
    response = app_client.post(f"/admin/accounts/{body['account_id']}/keys", json=payload, headers=ADMIN)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert count(engine, "api_keys") == 1


def test_a_key_for_an_unknown_account_is_404(app_client: TestClient, engine: Engine) -> None:
    response = app_client.post("/admin/accounts/acct_missing/keys", json={}, headers=ADMIN)
    assert response.status_code == 404 and response.json()["error"]["code"] == "account_not_found"
    assert count(engine, "api_keys") == 0
