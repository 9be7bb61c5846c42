"""Request rate limits on chat: counted per key (not per account), the plan's default rate, and,
with Redis, one counter shared by every API process."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from common.settings import Settings
from tests.api.chat.helpers import Gateway, GatewayFactory, assert_books_balance
from tests.conftest import TestAccount

BODY = {"model": "helyx-3.5", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 5}
PLAN_DEFAULTS = {plan: Settings.model_fields[f"rate_limit_{plan}"].default for plan in ("free", "plus", "pro", "ultra")}


def chat(gateway: Gateway, key: TestAccount | str) -> httpx.Response:
    with gateway.http(key) as http:
        return http.post("/chat/completions", json=BODY)


def second_key(gateway: Gateway, account: TestAccount) -> str:
    with gateway.http(account) as http:
        return str(http.post("/keys", json={"name": "second"}).json()["key"])


def test_two_keys_of_one_account_are_limited_separately(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(rate_limit_free=2)
    account = gateway.account()
    other = second_key(gateway, account)

    first = [chat(gateway, account).status_code for _ in range(3)]
    second = [chat(gateway, other).status_code for _ in range(3)]

    assert first == [200, 200, 429]
    assert second == [200, 200, 429]
    assert_books_balance(gateway.engine, account.account_id)


def test_the_plan_defaults_are_20_60_120_and_300_requests_a_minute(make_gateway: GatewayFactory) -> None:
    assert PLAN_DEFAULTS == {"free": 20, "plus": 60, "pro": 120, "ultra": 300}
    gateway = make_gateway(**{f"rate_limit_{plan}": rate for plan, rate in PLAN_DEFAULTS.items()})
    accounts = {plan: gateway.account(plan) for plan in PLAN_DEFAULTS}

    for plan, account in accounts.items():
        response = chat(gateway, account)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == str(PLAN_DEFAULTS[plan])
        assert response.headers["x-ratelimit-remaining-requests"] == str(PLAN_DEFAULTS[plan] - 1)

    free = [chat(gateway, accounts["free"]).status_code for _ in range(20)]
    assert free == [200] * 19 + [429]
    assert chat(gateway, accounts["plus"]).status_code == 200  # 2 of 60: far from its limit


@pytest.mark.redis
def test_two_app_instances_on_one_redis_share_one_counter(make_gateway: GatewayFactory, redis_url: str) -> None:
    one = make_gateway(redis_url=redis_url, simulate="1", rate_limit_free=3)
    two = make_gateway(redis_url=redis_url, simulate="1", rate_limit_free=3)
    account = one.account()
    other = second_key(one, account)

    answers = [chat(gw, account) for gw in (one, two, one, two)]

    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0", "0"]
    assert answers[-1].json()["error"]["type"] == "rate_limit_error"
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert chat(two, other).status_code == 200  # the account's other key has its own counter


def test_a_rate_limit_store_that_does_not_answer_fails_closed_with_503(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(redis_url="redis://127.0.0.1:1/0", simulate="1")
    account = gateway.account()
    before = assert_books_balance(gateway.engine, account.account_id)

    response = chat(gateway, account)

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
    assert assert_books_balance(gateway.engine, account.account_id) == before


def test_a_rate_limit_store_that_accepts_but_never_answers_fails_closed_with_503_within_its_deadline(
        make_gateway: GatewayFactory) -> None:
    """A frozen Redis (the connection is accepted, no reply ever comes): one deadline of about a
    second around the whole check, then 503, and nothing charged."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel accepts; nobody ever reads or writes
        gateway = make_gateway(redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0", simulate="1")
        account = gateway.account()
        before = assert_books_balance(gateway.engine, account.account_id)
        started = time.monotonic()
        response = chat(gateway, account)
        took = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.json()["error"]["type"] == "server_error"
    assert 0.9 < took < 3.0
    assert assert_books_balance(gateway.engine, account.account_id) == before


def test_every_answer_the_limiter_counted_carries_the_rate_limit_headers(make_gateway: GatewayFactory) -> None:
    """SPEC §2: rate-limited routes carry x-ratelimit-*: so do their refusals after the count
    (unknown model, plan gate, insufficient credits), or the client cannot see what it has left."""
    gateway = make_gateway(rate_limit_free=10)
    account = gateway.account()
    with gateway.http(account) as http:
        answers = [
            http.post("/chat/completions", json=BODY),
            http.post("/chat/completions", json={**BODY, "model": "no-such-model"}),
            http.post("/chat/completions", json={**BODY, "model": "claude-4.7"}),
            http.post("/chat/completions", json={**BODY, "max_tokens": 4096, "messages": [
                {"role": "user", "content": "x" * 150_000}]}),
        ]
    assert [r.status_code for r in answers] == [200, 404, 403, 402]
    for left, response in zip(range(9, 5, -1), answers, strict=True):
        assert response.headers["x-ratelimit-limit-requests"] == "10", response.status_code
        assert response.headers["x-ratelimit-remaining-requests"] == str(left), response.status_code
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
