"""A streamed call's head goes out with its first chunk, so a client that leaves before it (its
read timeout shorter than the model's time to the first token) was not noticed: the upstream call
ran on to its end and was charged in full, and the SDK, which retries a request that timed out
before its response began, made three such calls. Now the gateway watches the client while it
waits: the upstream attempt is cancelled at once, and nothing is charged (nothing was produced; a
client leaving during a retry's back-off, when no call is even in flight, must not pay more than
one that waited for the failure). Found by reviews with the OpenAI SDK and of the diff."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import openai
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from tests.api.chat.helpers import Gateway, assert_books_balance, books, generation_row, hold_for, wait_for
from tests.conftest import TestAccount
from tests.fakes import Behaviour, FakeUpstream

MESSAGES = [{"role": "user", "content": "Think hard, then write a long story about a lighthouse."}]
BODY = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}
RATE = 200_000  # gpt-4o, micro-credits per token
UPSTREAM_DELAY = 6.0  # before the upstream's first byte: far longer than the client waits


def _generations(gw: Gateway, account: TestAccount) -> list[str]:
    with gw.engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT id FROM generations WHERE account_id = :a ORDER BY id"),
                                               {"a": account.account_id})]


def test_a_client_gone_before_the_first_token_stops_the_call_and_pays_nothing(
    upstream_gateway: Callable[..., Gateway], openai_fake: FakeUpstream, database: dict[str, str],
) -> None:
    openai_fake.behaviour = Behaviour(hang=UPSTREAM_DELAY, chunks=[f"word{i} " for i in range(50)])
    gw = upstream_gateway(openai=openai_fake, **database)
    account = gw.account()
    before = books(gw.engine, account.account_id)

    observed = _first_chunk_latencies()
    left = time.monotonic()
    with gw.http(account, timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/chat/completions", json=BODY)
    [generation_id] = wait_for(lambda: _generations(gw, account) or None, timeout=3.0)
    assert time.monotonic() - left < UPSTREAM_DELAY / 2  # settled when the client left, not when upstream answered

    record = generation_row(gw.engine, generation_id)
    assert (record["status"], record["error_code"], record["completion_tokens"]) == (
        "cancelled", "client_disconnected", 0)
    hold = hold_for(gw.engine, generation_id)
    assert (hold["status"], hold["charged"]) == ("released", 0)
    after = assert_books_balance(gw.engine, account.account_id)  # no hold left open
    assert after.balance == before.balance
    assert openai_fake.streams_completed == 0 and openai_fake.request_count == 1
    assert _first_chunk_latencies() == observed  # the client's patience is no measure of the provider's latency


def _first_chunk_latencies() -> float:
    labels = {"provider": "openai", "kind": "stream_first_chunk"}
    return REGISTRY.get_sample_value("helyx_upstream_request_duration_seconds_count", labels) or 0.0


def test_the_sdks_retries_of_a_stream_slower_than_its_timeout_pay_nothing(
    upstream_gateway: Callable[..., Gateway], openai_fake: FakeUpstream,
) -> None:
    openai_fake.behaviour = Behaviour(hang=UPSTREAM_DELAY, chunks=["Hello", " world"])
    gw = upstream_gateway(openai=openai_fake)
    account = gw.account()
    before = books(gw.engine, account.account_id)

    client = openai.OpenAI(base_url=gw.api, api_key=account.api_key, max_retries=2,
                           timeout=httpx.Timeout(30, read=0.5))
    with client, pytest.raises(openai.APITimeoutError):
        for _ in client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            pass

    generations = wait_for(lambda: g if len(g := _generations(gw, account)) == 3 else None, timeout=5.0)
    assert [generation_row(gw.engine, g)["status"] for g in generations] == ["cancelled"] * 3
    after = assert_books_balance(gw.engine, account.account_id)
    assert after.balance == before.balance  # it was 3 full calls
