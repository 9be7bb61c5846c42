"""The at-once admission on PostgreSQL (api.chat_admission, common.admit_pg): for a key this process
has let in before, the rate limit is counted first, then the key is looked up and its credits held
in one statement. Each case the statement must leave alone (an unknown, revoked or expired key, a
capped key, a plan that may not use the model, an allowance of an earlier day, a short balance)
writes nothing and goes on as in turn; a refusal of the rate limit comes before anything is held;
a hold made for a request that then fails is released."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, text

from api import deps
from common import accounts, admit_pg, billing, chat_billing, clock, keys, ledger
from common.catalog import Catalog
from common.db import make_engine
from tests.api.chat.helpers import (
    Gateway,
    GatewayFactory,
    Records,
    assert_books_balance,
    books,
    hold_for,
    holds,
    leave_available,
)
from tests.conftest import TEST_TZ, TestAccount, create_test_account

pytestmark = pytest.mark.postgres
MESSAGES = [{"role": "user", "content": "Say something about ledgers."}]
TZ = TEST_TZ
ALL_PLANS = ("free", "plus", "pro", "ultra")


def chat(http: httpx.Client, model: str = "gpt-4o", **body: Any) -> httpx.Response:
    return http.post("/chat/completions", json={"model": model, "messages": MESSAGES, **body})


@pytest.fixture
def at_once_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every at-once statement the app runs (it serves from this process), and what it returned."""
    calls: list[Any] = []
    original = admit_pg.authenticate_and_reserve

    async def spy(*args: Any, **kwargs: Any) -> admit_pg.Admitted:
        admitted = await original(*args, **kwargs)
        calls.append(admitted)
        return admitted

    monkeypatch.setattr(admit_pg, "authenticate_and_reserve", spy)
    return calls


@pytest.fixture
def pg_gateway(make_gateway: GatewayFactory, pg_url: str) -> Gateway:
    return make_gateway(database_url=pg_url)


# --- the statement itself -------------------------------------------------------------------------


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def _admit(pg_url: str, account: TestAccount, *, amount: int = 1_000_000, plans: tuple[str, ...] = ALL_PLANS,
           day: str | None = None, now: float | None = None) -> admit_pg.Admitted:
    async def run() -> admit_pg.Admitted:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            return await admit_pg.authenticate_and_reserve(
                conn, key_hash=keys.hash_key(account.api_key), plans=plans, day=day or billing.today(TZ),
                amount=amount, purpose="test:admit", now=now or clock.now().timestamp(), ttl=60)
    return asyncio.run(run())


def _written(engine: Engine, account_id: str) -> tuple[Any, ...]:
    """Everything a reservation would write for the account."""
    b = books(engine, account_id)
    with engine.connect() as conn:
        hold_rows = conn.execute(text("SELECT COUNT(*) FROM holds WHERE account_id = :a"), {"a": account_id}).scalar()
    return b, hold_rows


def test_a_valid_key_with_the_balance_is_looked_up_and_held_for_in_one_statement(
        pg_engine: Engine, pg_url: str) -> None:
    account = create_test_account(pg_engine, "free")
    before = books(pg_engine, account.account_id)
    admitted = _admit(pg_url, account, amount=1_500_000)
    now = clock.now().timestamp()
    assert accounts.principal_from_row(admitted.key_row, now) == accounts.authenticate(pg_engine, account.api_key,
                                                                                       now=now)
    assert admitted.hold_id is not None
    after = assert_books_balance(pg_engine, account.account_id, open_holds=1)
    assert after.held == before.held + 1_500_000 and after.balance == before.balance
    [hold] = holds(pg_engine, account.account_id)
    assert (hold["id"], hold["key_id"], hold["amount"], hold["status"]) == (
        admitted.hold_id, account.key_id, 1_500_000, "open")
    with pg_engine.connect() as conn:
        entry = conn.execute(text("SELECT kind, amount, held_delta, reference FROM ledger_entries"
                                  " WHERE hold_id = :h"), {"h": admitted.hold_id}).one()
    assert tuple(entry) == ("reserve", 0, 1_500_000, f"reserve:{admitted.hold_id}")


def test_an_unknown_key_finds_nothing_and_writes_nothing(pg_engine: Engine, pg_url: str) -> None:
    account = create_test_account(pg_engine, "free")
    stranger = TestAccount(account.account_id, "key_x", keys.generate_key())  # well formed, never issued
    before = _written(pg_engine, account.account_id)
    assert _admit(pg_url, stranger) == admit_pg.Admitted(None, None)
    assert _written(pg_engine, account.account_id) == before


@pytest.mark.parametrize("case", ["revoked", "expired", "capped", "plan", "earlier day", "short balance"])
def test_what_the_statement_cannot_decide_it_leaves_alone_writing_nothing(
        pg_engine: Engine, pg_url: str, case: str) -> None:
    account = create_test_account(pg_engine, "free")
    now = clock.now().timestamp()
    kwargs: dict[str, Any] = {}
    with pg_engine.begin() as conn:
        if case == "revoked":
            accounts.revoke_key(conn, account.key_id, now=now)
        elif case == "expired":
            conn.execute(text("UPDATE api_keys SET expires_at = :t WHERE id = :k"), {"t": now - 1, "k": account.key_id})
        elif case == "capped":
            conn.execute(text("UPDATE api_keys SET daily_cap = 10000000 WHERE id = :k"), {"k": account.key_id})
        elif case == "plan":
            kwargs["plans"] = ("plus", "pro", "ultra")
        elif case == "earlier day":
            kwargs["day"] = "2999-01-01"  # the account's allowance is of an earlier day than this one
        else:
            kwargs["amount"] = books(pg_engine, account.account_id).available + 1
    before = _written(pg_engine, account.account_id)
    admitted = _admit(pg_url, account, now=now, **kwargs)
    assert admitted.key_row is not None and admitted.hold_id is None
    assert _written(pg_engine, account.account_id) == before


# --- through the gateway ----------------------------------------------------------------------------


def test_a_key_seen_before_is_let_in_at_once_and_charged_as_in_turn(
        pg_gateway: Gateway, at_once_calls: list[Any]) -> None:
    account = pg_gateway.account("free")
    with pg_gateway.http(account) as http:
        first, second = chat(http), chat(http)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert len(at_once_calls) == 1 and at_once_calls[0].hold_id is not None  # the second request only
    assert at_once_calls[0].hold_id == hold_for(pg_gateway.engine, second.json()["id"])["id"]
    assert first.json()["helyx"]["credits_charged"] == second.json()["helyx"]["credits_charged"] > 0
    assert second.headers["x-ratelimit-remaining-requests"] == str(int(first.headers[
        "x-ratelimit-remaining-requests"]) - 1)
    b = assert_books_balance(pg_gateway.engine, account.account_id)
    assert [h["status"] for h in holds(pg_gateway.engine, account.account_id)] == ["settled", "settled"]
    assert b.entries == 1 + 4  # the opening allowance, then reserve and settle twice


@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_a_key_revoked_or_expired_after_it_was_seen_is_refused_at_once_and_nothing_is_held(
        pg_gateway: Gateway, at_once_calls: list[Any], how: str) -> None:
    account = pg_gateway.account("free")
    with pg_gateway.http(account) as http:
        assert chat(http).status_code == 200
        now = clock.now().timestamp()
        with pg_gateway.engine.begin() as conn:
            if how == "revoked":
                accounts.revoke_key(conn, account.key_id, now=now)
            else:
                conn.execute(text("UPDATE api_keys SET expires_at = :t WHERE id = :k"), {"t": now, "k": account.key_id})
        before = _written(pg_gateway.engine, account.account_id)
        refused = chat(http)
        again = chat(http)  # forgotten: looked up in turn, refused the same
    assert refused.status_code == again.status_code == 401
    assert refused.json()["error"]["code"] == again.json()["error"]["code"] == f"{how}_api_key"
    assert len(at_once_calls) == 1 and at_once_calls[0].hold_id is None
    assert _written(pg_gateway.engine, account.account_id) == before


def test_a_plan_that_no_longer_allows_the_model_is_a_403_with_nothing_held(
        pg_gateway: Gateway, at_once_calls: list[Any]) -> None:
    account = pg_gateway.account("plus")
    with pg_gateway.http(account) as http:
        assert chat(http, "claude-4.7").status_code == 200
        with pg_gateway.engine.begin() as conn:
            ledger.change_plan(conn, account.account_id, "free", billing.today(TZ), now=clock.now().timestamp())
        before = _written(pg_gateway.engine, account.account_id)
        refused = chat(http, "claude-4.7")
    assert refused.status_code == 403, refused.text
    assert "x-ratelimit-remaining-requests" in refused.headers  # counted, as in turn
    assert len(at_once_calls) == 1 and at_once_calls[0].hold_id is None
    assert _written(pg_gateway.engine, account.account_id) == before


def test_a_capped_key_is_looked_up_at_once_and_reserved_in_turn(
        pg_gateway: Gateway, at_once_calls: list[Any]) -> None:
    account = pg_gateway.account("free")
    with pg_gateway.engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET daily_cap = 50000000 WHERE id = :k"), {"k": account.key_id})
    with pg_gateway.http(account) as http:
        answers = [chat(http) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [c.hold_id for c in at_once_calls] == [None, None]
    assert [h["key_cap_day"] is not None for h in holds(pg_gateway.engine, account.account_id)] == [True] * 3
    assert_books_balance(pg_gateway.engine, account.account_id)


def test_a_balance_short_of_the_default_hold_still_shrinks_max_tokens(
        pg_gateway: Gateway, at_once_calls: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    one_statement_reserves: list[Any] = []
    original = chat_billing.reserve_chat_async

    async def spy(*args: Any, **kwargs: Any) -> Any:
        one_statement_reserves.append(await original(*args, **kwargs))
        return one_statement_reserves[-1]

    monkeypatch.setattr(chat_billing, "reserve_chat_async", spy)
    account = pg_gateway.account("free")
    with pg_gateway.http(account) as http:
        assert chat(http).status_code == 200
        leave_available(pg_gateway.engine, account.account_id, 40_000_000)  # 200 tokens of gpt-4o at 0.2
        shrunk = chat(http)
    assert shrunk.status_code == 200, shrunk.text
    assert at_once_calls[-1].hold_id is None
    assert len(one_statement_reserves) == 1  # the first request's; the second went to the shrinking path at once
    hold = hold_for(pg_gateway.engine, shrunk.json()["id"])
    assert hold["amount"] <= 40_000_000 and hold["status"] == "settled"
    assert_books_balance(pg_gateway.engine, account.account_id)


def test_an_allowance_of_an_earlier_day_is_reset_before_the_hold(
        pg_gateway: Gateway, at_once_calls: list[Any]) -> None:
    account = pg_gateway.account("free")
    with pg_gateway.http(account) as http:
        assert chat(http).status_code == 200
        with clock.frozen(clock.now() + timedelta(days=1)):  # the next day: the allowance is yesterday's
            after_reset = chat(http)
            tomorrow = billing.today(pg_gateway.settings.timezone)
    assert after_reset.status_code == 200, after_reset.text
    assert at_once_calls[-1].hold_id is None  # the reset came first, then the hold in turn
    with pg_gateway.engine.connect() as conn:
        day = conn.execute(text("SELECT allowance_day FROM accounts WHERE id = :a"), {"a": account.account_id}).scalar()
        reset = conn.execute(text("SELECT COUNT(*) FROM ledger_entries WHERE account_id = :a AND reference = :r"),
                             {"a": account.account_id, "r": f"reset:{account.account_id}:{tomorrow}"}).scalar()
    assert (day, reset) == (tomorrow, 1)
    assert hold_for(pg_gateway.engine, after_reset.json()["id"])["status"] == "settled"
    assert_books_balance(pg_gateway.engine, account.account_id)


@pytest.mark.redis
def test_a_rate_limit_spent_by_another_process_refuses_before_anything_is_looked_up_or_held(
        make_gateway: GatewayFactory, pg_url: str, redis_url: str, at_once_calls: list[Any]) -> None:
    """Two API processes on one Redis: this one has seen the key, the other then spent its rate
    limit. The hit goes first and is refused: 429, and nothing is written."""
    one = make_gateway(database_url=pg_url, redis_url=redis_url, simulate="1", rate_limit_free=4)
    other = make_gateway(database_url=pg_url, redis_url=redis_url, simulate="1", rate_limit_free=4)
    account = one.account("free")
    with one.http(account) as http_one, other.http(account) as http_other:
        assert chat(http_one).status_code == 200  # this process now knows the key
        assert [chat(http_other).status_code for _ in range(3)] == [200, 200, 200]
        statements = len(at_once_calls)
        before = _written(one.engine, account.account_id)
        refused = chat(http_one)
        assert refused.status_code == 429, refused.text
        assert refused.headers["x-ratelimit-remaining-requests"] == "0" and int(refused.headers["retry-after"]) >= 1
        assert len(at_once_calls) == statements  # refused before the statement
        assert _written(one.engine, account.account_id) == before
        again = chat(http_one)  # forgotten: in turn now, refused the same
    assert again.status_code == 429
    assert _written(one.engine, account.account_id) == before


def _assert_the_at_once_hold_was_released(gateway: Gateway, account: TestAccount, at_once_calls: list[Any],
                                          failed: httpx.Response) -> None:
    """The request failed (500) after its at-once hold, and that hold was given back in full."""
    assert failed.status_code == 500, failed.text
    made = at_once_calls[-1].hold_id
    assert made is not None
    [released] = [h for h in holds(gateway.engine, account.account_id) if h["id"] == made]
    assert (released["status"], released["charged"]) == ("released", 0)
    assert_books_balance(gateway.engine, account.account_id)


def test_a_hold_made_at_once_is_released_when_recording_the_keys_use_fails(
        pg_gateway: Gateway, at_once_calls: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The key's last use is recorded after the statement (at most once a minute); should that
    write fail, the request is a 500 and the hold it made is released at once, not left to expire."""
    account = pg_gateway.account("free")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the write failed")

    with pg_gateway.http(account) as http:
        assert chat(http).status_code == 200
        monkeypatch.setattr(deps, "_after_authentication", broken)
        with clock.frozen(clock.now() + timedelta(seconds=61)):  # the key's last use is due again
            failed = chat(http)
    _assert_the_at_once_hold_was_released(pg_gateway, account, at_once_calls, failed)


def test_a_hold_made_at_once_is_released_when_the_model_checks_after_it_fail(
        pg_gateway: Gateway, at_once_calls: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The route resolves the model for the caller's plan after the at-once hold (checks the
    statement already made, so this should never fail); if it does, the hold goes back at once."""
    account = pg_gateway.account("free")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the catalog broke")

    with pg_gateway.http(account) as http:
        assert chat(http).status_code == 200
        monkeypatch.setattr(Catalog, "resolve", broken)
        failed = chat(http)
    _assert_the_at_once_hold_was_released(pg_gateway, account, at_once_calls, failed)


@pytest.mark.redis
def test_a_429_before_the_lookup_still_names_the_caller_in_its_log_line(
        make_gateway: GatewayFactory, pg_url: str, redis_url: str, at_once_calls: list[Any],
        request_log: Records) -> None:
    gateway = make_gateway(database_url=pg_url, redis_url=redis_url, simulate="1", rate_limit_free=2)
    account = gateway.account("free")
    with gateway.http(account) as http:
        answers = [chat(http).status_code for _ in range(3)]
    assert answers == [200, 200, 429]
    assert len(at_once_calls) == 1  # the second; the third was refused before its statement
    [line] = [r for r in request_log.records if getattr(r, "status", None) == 429]
    assert (line.account_id, line.key_prefix) == (account.account_id, keys.display_prefix(account.api_key))  # type: ignore[attr-defined]


def test_concurrent_requests_of_a_key_seen_before_never_overdraw(
        pg_gateway: Gateway, at_once_calls: list[Any]) -> None:
    """40 at once on an account that affords about 6 holds: the ones that fit are held at once,
    the rest get a 402 (their max_tokens is their own); the books balance and nothing stays held."""
    account = pg_gateway.account("free")
    with pg_gateway.http(account) as http:
        first = chat(http, max_tokens=50)
    assert first.status_code == 200
    full_hold = hold_for(pg_gateway.engine, first.json()["id"])["amount"]
    leave_available(pg_gateway.engine, account.account_id, 6 * full_hold + full_hold // 2)

    def one(_: int) -> int:
        with pg_gateway.http(account) as http:
            return chat(http, max_tokens=50).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(one, range(40)))
    assert set(statuses) <= {200, 402} and statuses.count(200) >= 6, statuses
    assert sum(1 for c in at_once_calls if c.hold_id is not None) >= 6
    b = assert_books_balance(pg_gateway.engine, account.account_id)
    assert b.available >= 0
    chat_holds = [h for h in holds(pg_gateway.engine, account.account_id) if h["purpose"].startswith("chat:")]
    assert [h["status"] for h in chat_holds] == ["settled"] * (statuses.count(200) + 1)  # a refusal held nothing

