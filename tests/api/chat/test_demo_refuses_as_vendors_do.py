"""The simulated model standing in for a vendor's (the demo: no provider keys) refuses, before
anything is held, what that vendor's adapter refuses in production; it answers the rest."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.chat.helpers import Gateway, assert_books_balance, books
from tests.api.chat.test_sdk import micro
from tests.api.chat.test_tools import MESSAGES, WEATHER

JSON_MODE = {"messages": [{"role": "user", "content": "Answer in JSON: what is 2 + 2?"}],
             "response_format": {"type": "json_object"}}
TOOLS = {"messages": MESSAGES, "tools": [WEATHER]}
ARRAY_ARGUMENTS = {"messages": [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "[1]"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}], "tools": [WEATHER]}


@pytest.mark.parametrize(("model", "body", "param"), [
    ("claude-3-5-sonnet", JSON_MODE, "response_format"),  # Anthropic has no JSON mode
    ("perplexity-sonar", TOOLS, "tools"),  # Perplexity has no function tools
    ("gemini-1-5-pro", ARRAY_ARGUMENTS, "messages"),  # Gemini's call arguments are an object
    ("claude-3-5-sonnet", ARRAY_ARGUMENTS, "messages"),  # so are Anthropic's
    ("claude-3-5-sonnet", {"messages": MESSAGES, "stop": ["\n"]}, "stop"),  # Anthropic: no whitespace-only stop
])
def test_the_demo_refuses_what_the_models_vendor_refuses(gateway: Gateway, model: str, body: dict[str, Any],
                                                         param: str) -> None:
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.http(account) as http:
        refused = http.post("/chat/completions", json={"model": model, **body})
        answered = http.post("/chat/completions", json={"model": "gpt-4o", **body})  # OpenAI takes it

    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"].startswith(param)
    assert answered.status_code == 200, answered.text
    after = assert_books_balance(gateway.engine, account.account_id)
    assert before.balance - after.balance == micro(answered.json()["helyx"]["credits_charged"])  # the refusal: nothing
