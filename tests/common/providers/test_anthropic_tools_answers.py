"""AnthropicProvider's function tools in the answers: tool calls read from the fake Messages API over
HTTP, plain and streamed, sent back with their results, and the stream reader's edges."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from common.errors import UpstreamError
from common.providers.anthropic import AnthropicProvider
from common.providers.anthropic_tools import StreamedToolCalls
from common.providers.base import ChatDelta, ToolCall, ToolCallDelta, Usage
from tests.common.providers.anthropic_tools_helpers import TIME, WEATHER, asking, result, tool_blocks
from tests.common.providers.helpers import API_KEY, chat_request, collect, text_of
from tests.fakes import Behaviour, FakeUpstream, anthropic_upstream

pytestmark = pytest.mark.anyio

CALLS = [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "Europe/Paris", "format": 24, "note": "été"})]


def assembled(deltas: list[ChatDelta]) -> list[ToolCall]:
    """The tool calls a client puts together from streamed pieces, as OpenAI's SDK does."""
    calls: dict[int, dict[str, str]] = {}
    for piece in (p for d in deltas for p in d.tool_calls):
        current = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
        current["id"] += piece.id or ""
        current["name"] += piece.name or ""
        current["arguments"] += piece.arguments
    return [ToolCall(**calls[index]) for index in sorted(calls)]


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
