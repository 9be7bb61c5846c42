"""A vendor's usage is trusted only when its counts are counts. A negative, fractional, string or
boolean count is estimated instead (as a usage the vendor left out is): it can neither lower the
charge for what was produced nor fail a call the vendor answered. A count too large for any
context window is charged at the hold and recorded at the column's limit. On SQLite and
PostgreSQL, against the fake OpenAI upstream."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from common.chat_billing import estimated_usage
from common.providers.base import MAX_TOKEN_COUNT
from common.tokens import TOKENS_PER_IMAGE_USED
from tests.api.chat.helpers import Gateway, assert_books_balance, books, generation_row, hold_for
from tests.api.chat.test_billing_rules import MESSAGES, PROMPT, RATE, chat, micro, sse_events
from tests.fakes import FakeUpstream

UpstreamGateway = Callable[..., Gateway]
ANSWER = "Hello! How can I help you today?"  # the fake's answer


@pytest.fixture
def gw(upstream_gateway: UpstreamGateway, openai_fake: FakeUpstream, database: dict[str, str]) -> Gateway:
    return upstream_gateway(openai=openai_fake, upstream_retries=0, upstream_backoff_seconds=0.01, **database)


@pytest.mark.parametrize(("prompt", "completion"), [(-9, 9), (12, -9), ("12", 9), (12.5, 9), (12, True),
                                                     (12, None), (None, 9)])
def test_a_count_that_is_not_a_count_is_estimated_never_charged_less(
    gw: Gateway, openai_fake: FakeUpstream, prompt: Any, completion: Any,
) -> None:
    openai_fake.behaviour.prompt_tokens, openai_fake.behaviour.completion_tokens = prompt, completion
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http:
        response = chat(http, max_tokens=100)
    assert response.status_code == 200, response.text
    body = response.json()
    estimate = estimated_usage(MESSAGES, ANSWER)
    assert body["usage"] == {"prompt_tokens": estimate.prompt_tokens, "completion_tokens": estimate.completion_tokens,
                             "total_tokens": estimate.total_tokens}
    assert micro(body["helyx"]["credits_charged"]) == estimate.total_tokens * RATE
    after = assert_books_balance(gw.engine, account.account_id)
    assert before.balance - after.balance == estimate.total_tokens * RATE
    record = generation_row(gw.engine, body["id"])
    assert record is not None and record["usage_estimated"] and record["status"] == "succeeded"


def test_a_float_that_is_a_whole_number_is_a_count(gw: Gateway, openai_fake: FakeUpstream) -> None:
    openai_fake.behaviour.prompt_tokens, openai_fake.behaviour.completion_tokens = 12.0, 9
    with gw.http(gw.account()) as http:
        body = chat(http, max_tokens=100).json()
    assert body["usage"]["prompt_tokens"] == 12 and micro(body["helyx"]["credits_charged"]) == 21 * RATE


@pytest.mark.parametrize("reported", [3_000_000_000, 10**14, 10**30])
def test_a_count_beyond_any_context_window_is_charged_at_the_hold(
    gw: Gateway, openai_fake: FakeUpstream, reported: int,
) -> None:
    """3e9 overflowed the generations column on PostgreSQL: the settlement failed whole, a 500,
    the hold left to expire, the answer free. 10**14 overflowed SQLite's charge the same way."""
    openai_fake.behaviour.prompt_tokens = reported
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http:
        response = chat(http, max_tokens=50)
    assert response.status_code == 200, response.text
    after = assert_books_balance(gw.engine, account.account_id)
    assert after.open_holds == 0
    hold = hold_for(gw.engine, response.json()["id"])
    assert before.balance - after.balance == (PROMPT + 50) * RATE == hold["charged"]
    record = generation_row(gw.engine, response.json()["id"])
    assert record is not None and record["prompt_tokens"] == MAX_TOKEN_COUNT


def test_a_stream_without_usage_counts_the_prompts_images(gw: Gateway, openai_fake: FakeUpstream) -> None:
    openai_fake.behaviour.omit_usage = True
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
    with gw.http(gw.account()) as http:
        response = http.post("/chat/completions", json={"model": "gpt-4o", "messages": messages, "stream": True,
                                                        "max_tokens": 50})
    events = sse_events(response)
    last = events[-2]
    assert events[-1] == "[DONE]" and isinstance(last, dict), events[-2:]
    text_only = estimated_usage([{"role": "user", "content": "What is this?"}], "").prompt_tokens
    assert last["usage"]["prompt_tokens"] == text_only + 2 * TOKENS_PER_IMAGE_USED, json.dumps(last)
