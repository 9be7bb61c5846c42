"""AnthropicProvider's function tools in the request: their translation to the Messages API, and
the conversations it refuses."""

from __future__ import annotations

import re
from typing import Any

import pytest

from common.errors import InvalidRequest
from common.providers.anthropic import AnthropicProvider, build_body
from common.providers.http import UpstreamClient
from tests.common.providers.anthropic_tools_helpers import TIME, WEATHER, asking, result, tool_blocks
from tests.common.providers.helpers import chat_request

pytestmark = pytest.mark.anyio


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def body_for(**overrides: Any) -> dict[str, Any]:
    return build_body(chat_request(**overrides), stream=False)


# --- the request -----------------------------------------------------------------------------


def test_tools_become_anthropic_definitions_without_openai_strict() -> None:
    untyped = {"type": "function", "function": {"name": "lookup", "parameters": {"properties": {}}}}
    body = body_for(tools=[WEATHER, TIME, untyped])
    assert body["tools"] == [
        {"name": "get_weather", "description": "The weather in a city.", "input_schema": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        {"name": "lookup", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body  # Anthropic's default is auto, as OpenAI's is


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "get_time"}}, None, {"type": "tool", "name": "get_time"}),
    ("auto", True, {"type": "auto"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ({"type": "function", "function": {"name": "get_time"}}, False,
     {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True}),
    ("none", False, {"type": "none"}),  # Anthropic's "none" takes no such flag: no calls at all
])
def test_tool_choice_and_parallel_tool_calls_become_anthropic_tool_choice(
    choice: str | dict[str, Any] | None, parallel: bool | None, expected: dict[str, Any]
) -> None:
    assert body_for(tools=[WEATHER, TIME], tool_choice=choice, parallel_tool_calls=parallel)["tool_choice"] == expected


def test_without_tools_or_tool_calls_no_tool_field_is_sent() -> None:
    body = body_for(parallel_tool_calls=False)
    assert "tools" not in body and "tool_choice" not in body


def test_a_tool_conversation_becomes_tool_use_and_tool_result_blocks() -> None:
    body = body_for(tools=[WEATHER, TIME], messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather and time in Paris?"},
        asking(call("call_1", "get_weather", '{"city": "Paris"}'), call("call_2", "get_time", ""),
               content="Let me check."),
        result("call_1", "18°C, cloudy"),
        result("call_2", [text("14:"), text("05")]),
        {"role": "user", "content": "Thanks! And tomorrow?"},
    ])
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": [text("Weather and time in Paris?")]},
        {"role": "assistant", "content": [
            text("Let me check."),
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},  # blank arguments: none
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C, cloudy"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "14:05"},
            text("Thanks! And tomorrow?"),
        ]},
    ]


def test_tool_results_come_first_in_their_merged_user_turn_and_calls_after_the_text() -> None:
    """Anthropic refuses a user turn with anything before its tool_result blocks: whatever the
    order of the merged messages, they lead."""
    body = body_for(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather?"},
        asking(call("call_1", "get_weather", '{"city": "Oslo"}')),
        {"role": "assistant", "content": "One moment."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://img.test/sky.png"}}]},
        result("call_1", "Snow"),
    ])
    assert [block["type"] for block in body["messages"][1]["content"]] == ["text", "tool_use"]
    assert [block["type"] for block in body["messages"][2]["content"]] == ["tool_result", "image"]


def test_an_empty_tool_result_is_a_block_without_content() -> None:
    body = body_for(tools=[TIME], messages=[
        {"role": "user", "content": "Time?"},
        asking(call("call_1", "get_time", "{}"), call("call_2", "get_time", "{}")),
        result("call_1", ""),
        result("call_2", [text("  ")]),
    ])
    assert body["messages"][-1] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1"}, {"type": "tool_result", "tool_use_id": "call_2"}]}


def test_call_ids_anthropic_refuses_are_sent_as_the_same_derived_id_in_both_blocks() -> None:
    body = body_for(tools=[TIME], messages=[
        {"role": "user", "content": "Time?"},
        asking(call("functions.get_time:0", "get_time", "{}"), call("functions.get_time:1", "get_time", "{}")),
        result("functions.get_time:0", "noon"),
        result("functions.get_time:1", "noon"),
    ])
    used = [block["id"] for block in body["messages"][1]["content"]]
    answered = [block["tool_use_id"] for block in body["messages"][2]["content"]]
    assert used == answered
    assert len(set(used)) == 2
    assert all(block_id.startswith("functions_get_time_") for block_id in used)
    assert all(set(block_id) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-") for block_id in used)


def test_a_call_id_reused_in_later_turns_is_sent_once_and_each_result_answers_its_own_turns_call() -> None:
    """Vendors that number calls per turn (Kimi's "functions.get_weather:0") reuse an id in the next
    turn; Anthropic refuses a tool_use id that repeats in the conversation."""
    body = body_for(tools=[WEATHER, TIME], messages=[
        {"role": "user", "content": "Weather in Paris, Oslo, then the time?"},
        asking(call("functions.get_weather:0", "get_weather", '{"city": "Paris"}'), call("c", "get_time", "{}")),
        result("c", "noon"), result("functions.get_weather:0", "Sun"),
        asking(call("functions.get_weather:0", "get_weather", '{"city": "Oslo"}')),
        result("functions.get_weather:0", "Snow"),
        {"role": "user", "content": "And now?"},
        asking(call("c", "get_time", "{}"), call("functions.get_weather:0", "get_weather", '{"city": "Oslo"}')),
        result("functions.get_weather:0", "Rain"), result("c", "one"),
    ])
    used = tool_blocks(body, "tool_use", "id")
    answered = tool_blocks(body, "tool_result", "tool_use_id")
    assert [len(ids) for ids in used] == [0, 2, 0, 1, 0, 2, 0]
    every_id = [block_id for ids in used for block_id in ids]
    assert len(set(every_id)) == len(every_id) == 5
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", block_id) for block_id in every_id)
    first = body_for(tools=[WEATHER, TIME], messages=[
        {"role": "user", "content": "Weather?"},
        asking(call("functions.get_weather:0", "get_weather", "{}"), call("c", "get_time", "{}")),
    ])
    assert used[1] == tool_blocks(first, "tool_use", "id")[1]  # a first use is sent as it was before
    assert answered[2] == [used[1][1], used[1][0]]  # each result the id of its own turn's call, in its order
    assert answered[4] == used[3]
    assert answered[6] == [used[5][1], used[5][0]]
    results = [block["content"] for message in body["messages"] for block in message["content"]
               if block["type"] == "tool_result"]
    assert results == ["noon", "Sun", "Snow", "Rain", "one"]


def test_the_ids_a_reused_call_id_gets_depend_only_on_the_conversation_before_it() -> None:
    """A conversation that grows sends its earlier turns as it did (Anthropic's prompt cache reads a
    prefix), and a client's id that happens to look like a derived one does not make a repeat."""
    turns = [asking(call("call_0", "get_time", "{}")), result("call_0", "noon"),
             asking(call("call_0", "get_time", "{}")), result("call_0", "one"),
             asking(call("call_0_m3", "get_time", "{}"), call("call_0", "get_time", "{}")),
             result("call_0_m3", "two"), result("call_0", "three")]
    question = {"role": "user", "content": "Time?"}
    shorter = tool_blocks(body_for(tools=[TIME], messages=[question, *turns[:4]]), "tool_use", "id")
    longer = tool_blocks(body_for(tools=[TIME], messages=[question, *turns]), "tool_use", "id")
    assert longer[:len(shorter)] == shorter
    every_id = [block_id for ids in longer for block_id in ids]
    assert every_id[0] == "call_0" and len(set(every_id)) == len(every_id) == 4


def test_a_history_of_tool_calls_without_tools_declares_them_and_lets_none_be_called() -> None:
    """Anthropic refuses tool_use and tool_result blocks in a request without tools; OpenAI answers
    it, calling nothing."""
    body = body_for(messages=[
        {"role": "user", "content": "Weather?"},
        asking(call("call_1", "get_weather", '{"city": "Oslo"}'), call("call_2", "get_weather", '{"city": "Rome"}')),
        result("call_1", "Snow"), result("call_2", "Sun"),
        {"role": "user", "content": "Summarise."},
    ])
    assert body["tools"] == [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "none"}


def test_a_final_assistant_turn_after_tool_results_is_still_a_prefill_stripped_of_trailing_space() -> None:
    body = body_for(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather?"},
        asking(call("call_1", "get_weather", '{"city": "Oslo"}'), content="Checking. "),
        result("call_1", "Snow"),
        {"role": "assistant", "content": "In Oslo it is "},
    ])
    assert body["messages"][1]["content"][0] == text("Checking. ")  # not the final turn: as it was
    assert body["messages"][-1] == {"role": "assistant", "content": [text("In Oslo it is")]}


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("arguments", ["not json", "[1, 2]", '"Paris"', "null", '{"city": '])
def test_tool_call_arguments_that_are_not_a_json_object_are_refused(arguments: str) -> None:
    provider = AnthropicProvider(UpstreamClient(), "http://x", None)
    messages = [{"role": "user", "content": "Weather?"}, asking(call("call_1", "get_weather", arguments)),
                result("call_1", "Snow")]
    with pytest.raises(InvalidRequest) as refused:
        provider.refuse_unsendable(messages, tools=[WEATHER])
    assert refused.value.param == "messages"


@pytest.mark.parametrize("tool", [
    {"type": "function", "function": {"name": "get.weather"}},
    {"type": "function", "function": {"name": "x" * 65}},
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "string"}}},
])
def test_tools_anthropic_would_refuse_are_refused(tool: dict[str, Any]) -> None:
    provider = AnthropicProvider(UpstreamClient(), "http://x", None)
    with pytest.raises(InvalidRequest) as refused:
        provider.refuse_unsendable([{"role": "user", "content": "Hi"}], tools=[WEATHER, tool])
    assert refused.value.param == "tools"


def test_a_sendable_tool_conversation_is_not_refused_and_the_older_refusals_hold() -> None:
    provider = AnthropicProvider(UpstreamClient(), "http://x", None)
    messages = [{"role": "user", "content": "Weather?"}, asking(call("call_1", "get_weather", '{"city": "Oslo"}')),
                result("call_1", "")]
    provider.refuse_unsendable(messages, tools=[WEATHER, TIME])  # nothing raised
    with pytest.raises(InvalidRequest) as refused:
        provider.refuse_unsendable(messages, stop=["\n"], tools=[WEATHER])
    assert refused.value.param == "stop"
