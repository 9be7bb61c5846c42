"""The simulated provider's function tools: when it calls one, which, with what arguments; its
streamed call; its counts, which stay within the hold's estimate."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.providers.base import ChatRequest
from common.providers.simulated import SimulatedChatProvider, simulated_prompt_tokens
from common.providers.simulated_tools import tool_call_for
from common.tokens import estimate_prompt_tokens
from tests.common.providers.helpers import chat_request, collect

pytestmark = pytest.mark.anyio


def tool(name: str, description: str = "", **parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description,
                                             **({"parameters": parameters} if parameters else {})}}


SEARCH = tool("search_flights", "Flights between two airports", type="object", required=["origin", "day"],
              properties={"origin": {"type": "string"}, "day": {"type": "string", "enum": ["mon", "tue"]},
                          "seats": {"type": "integer"}})
PRICE = tool("stock_price", "The price of a stock", type="object",
             properties={"symbol": {"type": "string"}, "exact": {"type": ["null", "boolean"]},
                         "limit": {"type": "number"}, "tags": {"type": "array"}, "extra": {"type": "object"},
                         "anything": {}})
ASK = [{"role": "user", "content": "Find flights from Oslo"}]
AFTER_RESULTS = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "search_flights", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "Two flights on Monday"}]


def request(messages: list[dict[str, Any]] = ASK, **fields: Any) -> ChatRequest:
    return chat_request(messages=messages, **{"tools": [PRICE, SEARCH], **fields})


def test_it_calls_the_tool_that_shares_most_words_with_the_question_and_fills_the_required_arguments() -> None:
    call = tool_call_for(request())
    assert call is not None and call.name == "search_flights"
    assert json.loads(call.arguments) == {"origin": "Oslo", "day": "mon"}
    assert call.id.startswith("call_") and call == tool_call_for(request())  # deterministic


def test_without_required_properties_every_property_gets_a_value_of_its_type() -> None:
    call = tool_call_for(request([{"role": "user", "content": "stock price of ACME"}]))
    assert call is not None and call.name == "stock_price"
    assert json.loads(call.arguments) == {"symbol": "ACME", "exact": True, "limit": 1, "tags": [],
                                          "extra": {}, "anything": "ACME"}


def test_a_tie_goes_to_the_first_tool_and_a_tool_without_parameters_gets_no_arguments() -> None:
    call = tool_call_for(chat_request(messages=[{"role": "user", "content": "hello"}],
                                      tools=[tool("ping"), tool("pong")]))
    assert call is not None and (call.name, call.arguments) == ("ping", "{}")


@pytest.mark.parametrize(("messages", "choice", "called"), [
    (ASK, "none", None),
    (ASK, None, "search_flights"),
    (ASK, "auto", "search_flights"),
    (AFTER_RESULTS, "auto", None),  # the results are in: it answers
    (AFTER_RESULTS, "required", "search_flights"),
    (ASK, {"type": "function", "function": {"name": "stock_price"}}, "stock_price"),
    ([*ASK, {"role": "assistant", "content": "Sure,"}], "auto", None),  # a prefill is continued in text
])
def test_when_it_calls_a_tool(messages: list[dict[str, Any]], choice: Any, called: str | None) -> None:
    call = tool_call_for(request(messages, tool_choice=choice))
    assert (call.name if call else None) == called


async def test_after_the_results_it_answers_with_them() -> None:
    result = await SimulatedChatProvider().complete(request(AFTER_RESULTS))
    assert result.tool_calls == [] and result.finish_reason == "stop"
    assert "search_flights returned “Two flights on Monday”" in result.content


async def test_a_streamed_call_is_the_plain_call_in_pieces() -> None:
    provider = SimulatedChatProvider()
    plain = await provider.complete(request())
    deltas, error = await collect(provider, request())
    pieces = [piece for delta in deltas for piece in delta.tool_calls]
    assert error is None and len(pieces) > 2
    assert (pieces[0].id, pieces[0].name) == (plain.tool_calls[0].id, plain.tool_calls[0].name)
    assert "".join(p.arguments for p in pieces) == plain.tool_calls[0].arguments
    assert deltas[-1].finish_reason == "tool_calls" and deltas[-1].usage == plain.usage


async def test_max_tokens_cuts_the_arguments_and_says_length() -> None:
    result = await SimulatedChatProvider().complete(request(max_tokens=4))
    (call,) = result.tool_calls
    assert result.finish_reason == "length" and len(call.name + call.arguments) <= 16
    assert result.usage is not None and result.usage.completion_tokens <= 4


@pytest.mark.parametrize("messages", [ASK, AFTER_RESULTS])
async def test_its_counts_stay_within_the_holds_estimate_with_tools(messages: list[dict[str, Any]]) -> None:
    result = await SimulatedChatProvider().complete(request(messages))
    assert result.usage is not None
    assert result.usage.prompt_tokens == simulated_prompt_tokens(messages, [PRICE, SEARCH])
    assert result.usage.prompt_tokens <= estimate_prompt_tokens(messages, tools=[PRICE, SEARCH])
    assert simulated_prompt_tokens(messages, [PRICE, SEARCH]) > simulated_prompt_tokens(messages)
