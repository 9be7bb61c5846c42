"""200 concurrent chat requests on real PostgreSQL and real Redis, from an account whose balance
covers exactly 50 reservations: exactly 50 go through, the rest are 402 in the error envelope,
and the books balance with no hold left open and the balance never below zero.

Every call's upstream reports far more usage than was reserved, so each success is charged its
whole hold (a charge never exceeds its hold) and frees nothing: no interleaving of settlements
can make room for a 51st call, so "at most 50" is exact whatever the timing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from api.app import create_app
from common.settings import Settings
from common.tokens import estimate_prompt_tokens
from tests.api.chat.helpers import assert_books_balance, books, leave_available, serve_app
from tests.conftest import create_test_account, make_settings
from tests.fakes import Behaviour, FakeUpstream, openai_upstream

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

REQUESTS, AFFORDABLE = 200, 50
MESSAGES = [{"role": "user", "content": "How many of us fit?"}]
MAX_TOKENS = 20
RATE = 200_000  # gpt-4o, micro-credits per token
HOLD = (estimate_prompt_tokens(MESSAGES) + MAX_TOKENS) * RATE


@pytest.fixture
def openai_fake() -> Iterator[FakeUpstream]:
    with openai_upstream.run(Behaviour(prompt_tokens=5_000, completion_tokens=5_000)) as fake:
        yield fake


class BalanceWatch:
    """Samples the account's numbers while the burst runs; remembers the lowest seen."""

    def __init__(self, engine: Engine, account_id: str) -> None:
        self.engine, self.account_id = engine, account_id
        self.lowest: tuple[int, int, int] | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = text("SELECT allowance, topup, allowance + topup - held FROM accounts WHERE id = :a")
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                row = tuple(int(v) for v in conn.execute(query, {"a": self.account_id}).one())
                conn.commit()
                self.lowest = row if self.lowest is None else tuple(map(min, self.lowest, row))  # type: ignore[assignment]
                self.samples += 1
                self._stop.wait(0.002)

    def __enter__(self) -> BalanceWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def settings(tmp_path: Path, pg_url: str, redis_url: str, openai_fake: FakeUpstream,
             monkeypatch: pytest.MonkeyPatch) -> Settings:
    """PostgreSQL and Redis, gpt-4o on the fake, rate limits out of the way, no upstream retries."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(f'[providers.openai]\nbase_url = "{openai_fake.base_url}"\n', "utf-8")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-provider-key")
    return make_settings(tmp_path, database_url=pg_url, redis_url=redis_url, catalog=catalog,
                         rate_limit_free=100_000, upstream_retries=0)


async def burst(url: str, api_key: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {api_key}"},
                                 limits=limits, timeout=60, trust_env=False, verify=False) as client:
        body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
        return await asyncio.gather(*(client.post("/chat/completions", json=body) for _ in range(REQUESTS)))


def test_200_concurrent_requests_against_50_affordable_holds(
    settings: Settings, pg_engine: Engine, openai_fake: FakeUpstream,
) -> None:
    account = create_test_account(pg_engine, "free")
    leave_available(pg_engine, account.account_id, AFFORDABLE * HOLD + HOLD - 1)
    before = assert_books_balance(pg_engine, account.account_id)

    with serve_app(create_app(settings)) as url, BalanceWatch(pg_engine, account.account_id) as watch:
        responses = asyncio.run(burst(url, account.api_key))

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == AFFORDABLE, {s: statuses.count(s) for s in set(statuses)}
    assert statuses.count(402) == REQUESTS - AFFORDABLE
    for refused in (r for r in responses if r.status_code == 402):
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "code", "param"}
        assert error["type"] == "insufficient_quota" and error["param"] == "max_tokens"
        assert refused.headers["x-should-retry"] == "false"
    assert openai_fake.request_count == AFFORDABLE

    assert watch.samples > 0 and watch.lowest is not None and min(watch.lowest) >= 0
    after = assert_books_balance(pg_engine, account.account_id)  # entries sum to the balance, no open hold
    assert before.balance - after.balance == AFFORDABLE * HOLD
    assert after.available == HOLD - 1
    assert after.entries == before.entries + 2 * AFFORDABLE  # a reserve and a settle per success, nothing else
    with pg_engine.connect() as conn:
        kinds = dict(conn.execute(text(
            "SELECT status, COUNT(*) FROM holds WHERE account_id = :a AND purpose LIKE 'chat:%' GROUP BY status"),
            {"a": account.account_id}).all())
        charged = conn.execute(text("SELECT COALESCE(SUM(credits), 0) FROM generations WHERE account_id = :a"),
                               {"a": account.account_id}).scalar_one()
    assert kinds == {"settled": AFFORDABLE}
    assert charged == AFFORDABLE * HOLD
    assert books(pg_engine, account.account_id).held == 0


def test_concurrent_requests_without_max_tokens_each_shrink_or_get_the_402_of_one_token(
    settings: Settings, pg_engine: Engine,
) -> None:
    """Without max_tokens a request shrinks its hold to what the balance affords; when another
    request took that room between the look and the hold, its 402 said "this request needs 953.4
    credits", the default's hold, instead of what the prompt and one token need (SPEC §3; found by an
    adversarial review). Now it looks again, and every refusal names the one-token need."""
    account = create_test_account(pg_engine, "free")
    full_hold = (estimate_prompt_tokens(MESSAGES) + settings.default_max_tokens) * RATE
    leave_available(pg_engine, account.account_id, full_hold + full_hold // 2)

    async def burst_without_max_tokens(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url + "/api/v1", timeout=60, trust_env=False,
                                     headers={"Authorization": f"Bearer {account.api_key}"},
                                     limits=httpx.Limits(max_connections=60, max_keepalive_connections=0)) as client:
            body = {"model": "gpt-4o", "messages": MESSAGES}
            return await asyncio.gather(*(client.post("/chat/completions", json=body) for _ in range(60)))

    with serve_app(create_app(settings)) as url:
        responses = asyncio.run(burst_without_max_tokens(url))

    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 402}, statuses
    for refused in (r for r in responses if r.status_code == 402):
        message = refused.json()["error"]["message"]
        assert "one token of answer" in message and "this request needs" not in message, message
    assert_books_balance(pg_engine, account.account_id)
