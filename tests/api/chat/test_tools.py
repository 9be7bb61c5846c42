"""Function tools through the gateway with the official SDK: the simulated model's calls (plain,
streamed, after the results), an OpenAI-compatible upstream's calls passed on as they came, each
charged exactly (the tools' definitions count in the hold and the charge); and every malformed
tool conversation a 400 naming its field, with nothing held or written."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from common.providers.simulated import simulated_prompt_tokens, simulated_tokens
from common.tokens import TOKENS_FOR_TOOLS, estimate_completion_tokens, estimate_prompt_tokens
from tests.api.chat.helpers import Gateway, GatewayFactory, assert_books_balance, books, generation_row, hold_for
from tests.api.chat.test_adapters_through_gateway import ADAPTERS
from tests.api.chat.test_sdk import RATE_MICRO, assert_nothing_moved, micro
from tests.fakes import Behaviour, FakeUpstream

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"}}, "required": ["city", "unit"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time in a time zone.",
                                          "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
TOOLS = [CLOCK, WEATHER]
QUESTION = "What is the weather in Paris?"
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]


def _call_turn(call_id: str = "call_1", name: str = "get_weather") -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": '{"city": "Paris"}'}}]}


def _result(call_id: str = "call_1", content: str = "Sunny, 21 C") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


# --- the simulated model -------------------------------------------------------------------------


def test_the_simulated_model_calls_the_matching_tool_and_the_call_is_charged_with_the_tools(gateway: Gateway) -> None:
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # its name and description share words with the question
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}  # the required ones
    usage = completion.usage
    assert usage.prompt_tokens == simulated_prompt_tokens(MESSAGES, TOOLS) > simulated_prompt_tokens(MESSAGES)
    assert usage.completion_tokens == simulated_tokens(call.function.name + call.function.arguments)
    charge = usage.total_tokens * RATE_MICRO["gpt-4o"]
    assert micro(completion.model_extra["helyx"]["credits_charged"]) == charge
    after = assert_books_balance(gateway.engine, account.account_id)
    assert before.balance - after.balance == charge
    hold = hold_for(gateway.engine, completion.id)
    prompt_bound = estimate_prompt_tokens(MESSAGES, tools=TOOLS)
    assert prompt_bound >= estimate_prompt_tokens(MESSAGES) + len(json.dumps(TOOLS)) + TOKENS_FOR_TOOLS
    assert hold["amount"] >= prompt_bound * RATE_MICRO["gpt-4o"]  # the tools were in the hold


def test_the_sdks_tool_loop_ends_with_an_answer_that_uses_the_results(make_gateway: GatewayFactory,
                                                                      database: dict[str, str]) -> None:
    """The usual client loop: the model's message appended as the SDK returned it, then the
    results; both answers charged exactly, on each database."""
    gateway = make_gateway(**database)
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        first = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS)
        message = first.choices[0].message
        conversation: list[Any] = [*MESSAGES, message]
        conversation += [{"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}
                         for call in message.tool_calls]
        answer = client.chat.completions.create(model="gpt-4o", messages=conversation, tools=TOOLS)

    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None
    assert "get_weather returned “Sunny, 21 C”" in answer.choices[0].message.content
    after = assert_books_balance(gateway.engine, account.account_id)
    charged = [micro(reply.model_extra["helyx"]["credits_charged"]) for reply in (first, answer)]
    assert charged == [reply.usage.total_tokens * RATE_MICRO["gpt-4o"] for reply in (first, answer)]
    assert before.balance - after.balance == sum(charged)


@pytest.mark.parametrize(("choice", "called"), [
    ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
    ("required", "get_weather"),
    ("none", None),
])
def test_tool_choice_forces_a_tool_or_none(gateway: Gateway, choice: Any, called: str | None) -> None:
    account = gateway.account()
    after_results = [*MESSAGES, _call_turn(), _result()]  # "auto" answers in text here
    with gateway.sdk(account) as client:
        completion = client.chat.completions.create(model="gpt-4o", messages=after_results, tools=TOOLS,
                                                    tool_choice=choice)
    calls = completion.choices[0].message.tool_calls
    assert [c.function.name for c in calls or ()] == ([called] if called else [])
    assert completion.choices[0].finish_reason == ("tool_calls" if called else "stop")


def test_a_streamed_tool_call_comes_in_pieces_that_make_the_plain_call(gateway: Gateway) -> None:
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        plain = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS)
        mid = books(gateway.engine, account.account_id)
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS, stream=True,
                                                     stream_options={"include_usage": True}))

    pieces = [piece for c in chunks if c.choices for piece in c.choices[0].delta.tool_calls or ()]
    assert len(pieces) > 2 and {p.index for p in pieces} == {0}
    assert pieces[0].id == plain.choices[0].message.tool_calls[0].id and pieces[0].function.name == "get_weather"
    assert all(p.id is None and p.function.name is None for p in pieces[1:])
    arguments = "".join(p.function.arguments or "" for p in pieces)
    assert arguments == plain.choices[0].message.tool_calls[0].function.arguments
    finishes = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [f.finish_reason for f in finishes] == ["tool_calls"]
    assert finishes[0].delta.content is None and not finishes[0].delta.tool_calls  # OpenAI's empty delta
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens == plain.usage.total_tokens
    after = assert_books_balance(gateway.engine, account.account_id)
    assert mid.balance - after.balance == before.balance - mid.balance == usage.total_tokens * RATE_MICRO["gpt-4o"]


def test_the_sdks_stream_helper_reads_a_tool_call_answer_as_openais(gateway: Gateway) -> None:
    """Its final message has content None, not "" (a finish chunk with "content": "" made it ""; a review)."""
    account = gateway.account()
    with gateway.sdk(account) as client, client.chat.completions.stream(model="gpt-4o", messages=MESSAGES,
                                                                         tools=TOOLS) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content is None and message.tool_calls[0].function.name == "get_weather"
    assert json.loads(message.tool_calls[0].function.arguments)["city"] == "Paris"


# --- a real adapter: the OpenAI-compatible upstream ------------------------------------------------


@pytest.fixture
def fake_gateway(upstream_gateway: Any, openai_fake: FakeUpstream) -> tuple[Gateway, FakeUpstream]:
    openai_fake.behaviour = Behaviour(answer="", tool_calls=[("get_weather", {"city": "Paris", "unit": "celsius"}),
                                                             ("get_time", {"zone": "CET"})],
                                      prompt_tokens=80, completion_tokens=20)
    return upstream_gateway(openai=openai_fake), openai_fake


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstreams_tool_calls_are_passed_on_and_charged_from_its_usage(
        fake_gateway: tuple[Gateway, FakeUpstream], stream: bool) -> None:
    gateway, fake = fake_gateway
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    history = [*MESSAGES, _call_turn("call_0"), _result("call_0"), {"role": "user", "content": "And the time?"}]
    with gateway.sdk(account) as client:
        made = client.chat.completions.create(model="gpt-4o", messages=history, tools=TOOLS, tool_choice="auto",
                                              parallel_tool_calls=False, stream=stream,
                                              **({"stream_options": {"include_usage": True}} if stream else {}))
        if stream:
            chunks = list(made)
            calls: dict[int, dict[str, str]] = {}
            for piece in (p for c in chunks if c.choices for p in c.choices[0].delta.tool_calls or ()):
                call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += piece.id or ""
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
            got = [calls[i] for i in sorted(calls)]
            finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
            usage, helyx = chunks[-1].usage, chunks[-1].model_extra["helyx"]
        else:
            got = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                   for c in made.choices[0].message.tool_calls]
            finish, usage, helyx = made.choices[0].finish_reason, made.usage, made.model_extra["helyx"]

    sent = fake.last_request.json
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is False
    assert sent["messages"][1:3] == [_call_turn("call_0"), _result("call_0")]
    assert got == [{"id": "call_fake0", "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                   {"id": "call_fake1", "name": "get_time", "arguments": '{"zone": "CET"}'}]
    assert finish == "tool_calls"
    assert (usage.prompt_tokens, usage.completion_tokens) == (80, 20)
    assert micro(helyx["credits_charged"]) == 100 * RATE_MICRO["gpt-4o"]
    after = assert_books_balance(gateway.engine, account.account_id)
    assert before.balance - after.balance == 100 * RATE_MICRO["gpt-4o"]


def test_tool_calls_without_usage_are_charged_for_their_text(fake_gateway: tuple[Gateway, FakeUpstream]) -> None:
    """No usage from the upstream: the estimate counts the calls' names and arguments as produced text."""
    gateway, fake = fake_gateway
    fake.behaviour.omit_usage = True
    account = gateway.account()
    with gateway.sdk(account) as client:
        completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS)
    produced = "".join(c.function.name + c.function.arguments for c in completion.choices[0].message.tool_calls)
    assert completion.usage.completion_tokens == estimate_completion_tokens(produced) > 0
    assert generation_row(gateway.engine, completion.id)["usage_estimated"]
    assert_books_balance(gateway.engine, account.account_id)


# --- malformed tool conversations: a 400 naming the field, nothing held ----------------------------


@pytest.mark.parametrize(("fields", "param", "says"), [
    ({"messages": [*MESSAGES, _result()]}, "messages", "not an unanswered call"),
    ({"messages": [*MESSAGES, _call_turn(), {"role": "user", "content": "and?"}]}, "messages", "need their results"),
    ({"messages": [*MESSAGES, _call_turn()]}, "messages", "need their results"),
    ({"messages": [*MESSAGES, _call_turn(), _result(), _result()]}, "messages", "not an unanswered call"),
    ({"messages": [*MESSAGES, _call_turn(), _result("call_2")]}, "messages", "not an unanswered call"),
    ({"tool_choice": "auto"}, "tool_choice", "only allowed when tools are given"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_news"}}}, "tool_choice",
     "not among the tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "two tools are named 'get_weather'"),
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools.0", "should match pattern"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type", "function"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", ""),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools.0",
     "the JSON Schema of an object"),  # every vendor refuses it, after the hold (a review)
])
def test_a_malformed_tool_request_is_a_400_naming_it_and_holds_nothing(
        gateway: Gateway, fields: dict[str, Any], param: str, says: str) -> None:
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**{"model": "gpt-4o", "messages": MESSAGES, **fields})
    error = refused.value.body
    assert isinstance(error, dict) and error["param"].startswith(param), error
    assert says in error["message"], error
    assert_nothing_moved(gateway, account, before)


# --- each real adapter through the gateway, a whole tool loop --------------------------------------


@pytest.mark.parametrize("vendor", list(ADAPTERS))
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_loop_through_each_adapter_with_the_ids_it_returned(
        request: pytest.FixtureRequest, upstream_gateway: Any, vendor: str, stream: bool) -> None:
    """The calls as the SDK reads them, sent back with their results (Gemini's fake, as Gemini 3,
    refuses a call that comes back without the thought signature its id carries), each answer
    charged from the fake's usage."""
    fake: FakeUpstream = request.getfixturevalue(f"{vendor}_fake")
    fake.behaviour = Behaviour(answer="", tool_calls=[("get_weather", {"city": "Paris", "unit": "celsius"})],
                               prompt_tokens=40, completion_tokens=10)
    gateway = upstream_gateway(**{vendor: fake})
    model, rate = ADAPTERS[vendor]
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
        made = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, stream=stream, **extra)
        if stream:
            chunks = list(made)
            pieces = [p for c in chunks if c.choices for p in c.choices[0].delta.tool_calls or ()]
            call_id, name = pieces[0].id, pieces[0].function.name
            arguments = "".join(p.function.arguments or "" for p in pieces)
            finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
            charged = chunks[-1].model_extra["helyx"]["credits_charged"]
        else:
            (call,) = made.choices[0].message.tool_calls
            call_id, name, arguments = call.id, call.function.name, call.function.arguments
            finish, charged = made.choices[0].finish_reason, made.model_extra["helyx"]["credits_charged"]
        assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "Paris", "unit": "celsius"},
                                                        "tool_calls")
        assert micro(charged) == 50 * rate
        fake.behaviour = Behaviour(answer="Sunny in Paris.", prompt_tokens=60, completion_tokens=5)
        turn = {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]}
        answer = client.chat.completions.create(model=model, tools=TOOLS, messages=[
            *MESSAGES, turn, {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 C"}])

    assert answer.choices[0].message.content == "Sunny in Paris." and answer.choices[0].finish_reason == "stop"
    after = assert_books_balance(gateway.engine, account.account_id)
    assert before.balance - after.balance == (50 + 65) * rate
