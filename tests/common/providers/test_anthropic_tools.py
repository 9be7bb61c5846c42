"""AnthropicProvider's function tools: their translation to the Messages API, the conversations
it refuses, and tool calls read from the fake Messages API over HTTP, plain and streamed."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from common.errors import InvalidRequest, UpstreamError
from common.providers.anthropic import AnthropicProvider, build_body
from common.providers.anthropic_tools import StreamedToolCalls
from common.providers.base import ChatDelta, ToolCall, ToolCallDelta, Usage
from common.providers.http import UpstreamClient
from tests.common.providers.helpers import API_KEY, chat_request, collect, text_of
from tests.fakes import Behaviour, FakeUpstream, anthropic_upstream

pytestmark = pytest.mark.anyio

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True}}
TIME = {"type": "function", "function": {"name": "get_time"}}
CALLS = [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "Europe/Paris", "format": 24, "note": "été"})]


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def asking(*calls: dict[str, Any], content: Any = None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def result(call_id: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def body_for(**overrides: Any) -> dict[str, Any]:
    return build_body(chat_request(**overrides), stream=False)


def assembled(deltas: list[ChatDelta]) -> list[ToolCall]:
    """The tool calls a client puts together from streamed pieces, as OpenAI's SDK does."""
    calls: dict[int, dict[str, str]] = {}
    for piece in (p for d in deltas for p in d.tool_calls):
        current = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
        current["id"] += piece.id or ""
        current["name"] += piece.name or ""
        current["arguments"] += piece.arguments
    return [ToolCall(**calls[index]) for index in sorted(calls)]


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


def tool_blocks(body: dict[str, Any], kind: str, key: str) -> list[list[str]]:
    """Per message sent, the `key` of each of its blocks of type `kind`."""
    return [[block[key] for block in message["content"] if block["type"] == kind] for message in body["messages"]]


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


# --- answers over HTTP -----------------------------------------------------------------------


async def test_a_plain_answer_with_text_and_two_tool_calls(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    anthropic_fake.behaviour = Behaviour(answer="Let me check.", tool_calls=CALLS, prompt_tokens=40,
                                         completion_tokens=30)
    request = chat_request(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=True)
    answer = await AnthropicProvider(client, anthropic_fake.base_url, API_KEY).complete(request)
    assert answer.content == "Let me check."
    assert answer.tool_calls == [
        ToolCall("toolu_fake0", "get_weather", '{"city": "Paris"}'),
        ToolCall("toolu_fake1", "get_time", '{"zone": "Europe/Paris", "format": 24, "note": "été"}'),
    ]
    assert answer.finish_reason == "tool_calls"
    assert answer.usage == Usage(40, 30)
    sent = anthropic_fake.last_request.json
    assert [tool["name"] for tool in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tool_choice"] == {"type": "any"}


async def test_a_stream_yields_tool_call_pieces_that_reassemble_to_the_plain_answers_calls(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    anthropic_fake.behaviour = Behaviour(answer="Let me check.", tool_calls=CALLS, prompt_tokens=40,
                                         completion_tokens=30)
    provider = AnthropicProvider(client, anthropic_fake.base_url, API_KEY)
    request = chat_request(tools=[WEATHER, TIME])
    plain = await provider.complete(request)
    deltas, error = await collect(provider, request)
    assert error is None
    assert text_of(deltas) == "Let me check."
    assert assembled(deltas) == plain.tool_calls
    assert [json.loads(c.arguments) for c in assembled(deltas)] == [arguments for _, arguments in CALLS]
    pieces = [p for d in deltas for p in d.tool_calls]
    assert pieces[0] == ToolCallDelta(0, id="toolu_fake0", name="get_weather")
    for index in (0, 1):  # each call's id and name first, once; its JSON in several fragments after
        own = [p for p in pieces if p.index == index]
        assert own[0].id is not None and all(p.id is None and p.name is None for p in own[1:])
        assert len(own) > 2 and all(p.arguments for p in own[1:])
    assert all(d.prompt_tokens == 40 for d in deltas[:-1])
    assert deltas[-1].finish_reason == "tool_calls"
    assert deltas[-1].usage == Usage(40, 30)
    assert anthropic_fake.last_request.json["stream"] is True


async def test_an_answer_of_tool_calls_only_has_no_content(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    anthropic_fake.behaviour = Behaviour(answer="", tool_calls=CALLS[:1])
    provider = AnthropicProvider(client, anthropic_fake.base_url, API_KEY)
    request = chat_request(tools=[WEATHER])
    plain = await provider.complete(request)
    assert plain.content == "" and [c.name for c in plain.tool_calls] == ["get_weather"]
    deltas, error = await collect(provider, request)
    assert error is None
    assert text_of(deltas) == "" and assembled(deltas) == plain.tool_calls


async def test_the_answers_calls_sent_back_with_their_results_reach_anthropic_as_they_came(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    anthropic_fake.behaviour = Behaviour(answer="", tool_calls=CALLS)
    provider = AnthropicProvider(client, anthropic_fake.base_url, API_KEY)
    first = await provider.complete(chat_request(tools=[WEATHER, TIME]))
    anthropic_fake.behaviour = Behaviour(answer="Cloudy, 14:05.")
    follow_up = [{"role": "user", "content": "Say hello"},
                 {"role": "assistant", "content": None, "tool_calls": [c.openai_view() for c in first.tool_calls]},
                 *[result(c.id, "done") for c in first.tool_calls]]
    provider.refuse_unsendable(follow_up, tools=[WEATHER, TIME])
    second = await provider.complete(chat_request(tools=[WEATHER, TIME], messages=follow_up))
    assert second.content == "Cloudy, 14:05." and second.tool_calls == [] and second.finish_reason == "stop"
    sent = anthropic_fake.last_request.json["messages"]
    assert sent[1]["content"] == [{"type": "tool_use", "id": f"toolu_fake{n}", "name": name, "input": arguments}
                                  for n, (name, arguments) in enumerate(CALLS)]
    assert [block["tool_use_id"] for block in sent[2]["content"]] == ["toolu_fake0", "toolu_fake1"]


async def test_a_tool_loop_whose_vendor_numbers_calls_per_answer_goes_on_at_anthropic(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """The fake numbers each answer's calls from toolu_fake0, as vendors that number calls per turn
    do: the third request holds two calls of that id, which the fake, as Anthropic, refuses."""
    provider = AnthropicProvider(client, anthropic_fake.base_url, API_KEY)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris, then the time?"}]
    for (name, arguments), answer in zip(CALLS, ["18°C", "14:05"], strict=True):
        anthropic_fake.behaviour = Behaviour(answer="", tool_calls=[(name, arguments)])
        reply = await provider.complete(chat_request(tools=[WEATHER, TIME], messages=messages))
        messages += [asking(*[c.openai_view() for c in reply.tool_calls]), result(reply.tool_calls[0].id, answer)]
    assert [m["tool_calls"][0]["id"] for m in messages if m.get("tool_calls")] == ["toolu_fake0", "toolu_fake0"]
    anthropic_fake.behaviour = Behaviour(answer="18°C, 14:05.")
    request = chat_request(tools=[WEATHER, TIME], messages=messages)
    assert (await provider.complete(request)).content == "18°C, 14:05."
    deltas, error = await collect(provider, request)
    assert error is None and text_of(deltas) == "18°C, 14:05."
    sent = anthropic_fake.last_request.json
    used = tool_blocks(sent, "tool_use", "id")
    assert used[1] == ["toolu_fake0"] and len(set(used[1] + used[3])) == 2
    assert tool_blocks(sent, "tool_result", "tool_use_id")[2::2] == [used[1], used[3]]


@pytest.mark.parametrize(("messages", "refusal"), [
    ([{"role": "user", "content": "Time?"},
      {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "now", "input": {}}]},
      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "noon"}]},
      {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "now", "input": {}}]},
      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "one"}]}],
     "messages.3.content.0: `tool_use` ids must be unique"),
    ([{"role": "user", "content": "Time?"},
      {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "now", "input": {}}]},
      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "noon"}]}],
     "messages.2.content.0: unexpected `tool_use_id`"),
    ([{"role": "user", "content": "Time?"},
      {"role": "assistant", "content": [{"type": "tool_use", "id": "functions.now:0", "name": "now", "input": {}}]},
      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "functions.now:0", "content": "noon"}]}],
     "messages.1.content.0.tool_use.id: String should match pattern"),
])
async def test_the_fake_refuses_tool_blocks_anthropic_refuses(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient, messages: list[dict[str, Any]], refusal: str
) -> None:
    """What makes the tests above able to fail: the fake checks what Anthropic checks."""
    body = {"model": "m", "max_tokens": 9, "messages": messages,
            "tools": [{"name": "now", "input_schema": {"type": "object"}}]}
    response = await client.post(f"{anthropic_fake.base_url}/v1/messages", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["message"].startswith(refusal)


@pytest.mark.parametrize("cut", ["error_after_chunks", "drop_after_chunks"])
async def test_a_stream_cut_in_the_middle_of_a_tool_call_raises_after_its_first_pieces(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient, cut: str
) -> None:
    anthropic_fake.behaviour = Behaviour(answer="", tool_calls=CALLS, **{cut: 2})
    deltas, error = await collect(AnthropicProvider(client, anthropic_fake.base_url, API_KEY),
                                  chat_request(tools=[WEATHER, TIME]))
    assert isinstance(error, UpstreamError)
    assert error.retryable is True
    calls = assembled(deltas)
    assert [c.name for c in calls] == ["get_weather"]
    assert calls[0].arguments == '{"city": "Paris"}'[:14]  # two fragments of seven characters
    assert all(d.finish_reason is None for d in deltas)


# --- the stream reader's edges ---------------------------------------------------------------


def test_a_streamed_call_whose_json_never_comes_gets_its_starting_input() -> None:
    """A call without arguments may stream no JSON at all: its arguments are then "{}", as the
    same call answered plainly reads."""
    reader = StreamedToolCalls()
    events = [
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        ("content_block_stop", {"index": 0}),
        ("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "now",
                                                              "input": {}}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ("content_block_stop", {"index": 1}),
        ("content_block_start", {"index": 2, "content_block": {"type": "tool_use", "id": "t2", "name": "add",
                                                              "input": {}}}),
        ("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"a": 1}'}}),
        ("content_block_stop", {"index": 2}),
    ]
    assert [piece for kind, data in events if (piece := reader.read(kind, data)) is not None] == [
        ToolCallDelta(0, id="t1", name="now"), ToolCallDelta(0, arguments="{}"),
        ToolCallDelta(1, id="t2", name="add"), ToolCallDelta(1, arguments='{"a": 1}'),
    ]


async def test_a_tool_use_block_of_the_wrong_shape_is_a_bad_response(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(anthropic_upstream, "_tool_use", lambda number, name, arguments: {
        "type": "tool_use", "id": number, "name": name, "input": arguments})
    anthropic_fake.behaviour = Behaviour(answer="", tool_calls=CALLS[:1])
    provider = AnthropicProvider(client, anthropic_fake.base_url, API_KEY)
    with pytest.raises(UpstreamError) as caught:
        await provider.complete(chat_request(tools=[WEATHER]))
    assert caught.value.code == "upstream_bad_response"
    deltas, error = await collect(provider, chat_request(tools=[WEATHER]))
    assert error is not None and error.code == "upstream_bad_response"
    assert not any(d.tool_calls for d in deltas)
