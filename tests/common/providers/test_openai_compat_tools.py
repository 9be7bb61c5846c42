"""OpenAICompatProvider's function tools: sent as they came, calls read back plain and streamed
(against the fake OpenAI upstream over HTTP), vendors' looser forms of a streamed call, and a
vendor that cannot take tools refused before anything is held."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from common.errors import InvalidRequest
from common.providers.base import ToolCall, ToolCallDelta, Usage
from common.providers.http import UpstreamClient
from common.providers.openai_compat import OpenAICompatProvider, _CallIndexes, _chunk_delta, _tool_call
from tests.common.providers.helpers import API_KEY, chat_request, collect
from tests.fakes import Behaviour, FakeUpstream

pytestmark = pytest.mark.anyio

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
CONVERSATION = [
    {"role": "user", "content": "Find it"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "it"}'}}]},
    {"role": "tool", "tool_call_id": "call_a", "content": "found"},
]
CALLS = [("lookup", {"q": "first"}), ("lookup", {"q": "second, with a longer argument"})]


async def test_tools_their_choice_and_the_conversations_calls_are_sent_as_they_came(
        openai_fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    request = chat_request(messages=CONVERSATION, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    await OpenAICompatProvider(client, openai_fake.base_url, API_KEY).complete(request)
    sent = openai_fake.last_request.json
    assert sent["messages"] == CONVERSATION
    assert (sent["tools"], sent["tool_choice"], sent["parallel_tool_calls"]) == (TOOLS, "required", False)


async def test_without_tools_no_tool_field_is_sent(openai_fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    await OpenAICompatProvider(client, openai_fake.base_url, API_KEY).complete(chat_request(tools=None,
                                                                                             tool_choice=None))
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(openai_fake.last_request.json)


async def test_a_plain_answers_tool_calls_are_read(openai_fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    openai_fake.behaviour = Behaviour(answer="Looking.", tool_calls=CALLS)
    result = await OpenAICompatProvider(client, openai_fake.base_url, API_KEY).complete(chat_request(tools=TOOLS))
    assert result.content == "Looking." and result.finish_reason == "tool_calls"
    assert result.tool_calls == [ToolCall("call_fake0", "lookup", '{"q": "first"}'),
                                 ToolCall("call_fake1", "lookup", '{"q": "second, with a longer argument"}')]
    assert result.usage == Usage(12, 9)


async def test_streamed_tool_calls_come_as_pieces_by_index(openai_fake: FakeUpstream,
                                                           client: httpx.AsyncClient) -> None:
    openai_fake.behaviour = Behaviour(answer="", tool_calls=CALLS)
    deltas, error = await collect(OpenAICompatProvider(client, openai_fake.base_url, API_KEY),
                                  chat_request(tools=TOOLS))
    assert error is None
    pieces = [piece for delta in deltas for piece in delta.tool_calls]
    assert [(p.index, p.id, p.name) for p in pieces if p.id] == [(0, "call_fake0", "lookup"),
                                                                  (1, "call_fake1", "lookup")]
    assert len(pieces) > 4  # the arguments came in several pieces
    assert "".join(p.arguments for p in pieces if p.index == 1) == '{"q": "second, with a longer argument"}'
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["tool_calls"]
    assert deltas[-1].usage == Usage(12, 9)


def _chunk(*pieces: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"tool_calls": list(pieces)}, "finish_reason": None}]}


def test_a_vendor_that_numbers_no_call_gets_one_index_per_new_id_and_object_arguments_as_json() -> None:
    indexes = _CallIndexes()
    first = _chunk_delta(_chunk({"id": "a", "function": {"name": "f", "arguments": {"x": 1}}}), None, indexes)
    more = _chunk_delta(_chunk({"function": {"arguments": ', "y": 2'}}), None, indexes)
    second = _chunk_delta(_chunk({"id": "b", "function": {"name": "g", "arguments": ""}}), None, indexes)
    again = _chunk_delta(_chunk({"id": "a", "function": {"arguments": "!"}}), None, indexes)
    assert first is not None and more is not None and second is not None and again is not None
    assert first.tool_calls == [ToolCallDelta(0, "a", "f", '{"x": 1}')]
    assert more.tool_calls == [ToolCallDelta(0, None, None, ', "y": 2')]
    assert second.tool_calls == [ToolCallDelta(1, "b", "g", "")]
    assert again.tool_calls == [ToolCallDelta(0, "a", None, "!")]


@pytest.mark.parametrize("call", [
    {"id": 7, "function": {"name": "f", "arguments": "{}"}},
    {"id": "a", "function": {"name": None, "arguments": "{}"}},
    {"id": "a"},
])
def test_a_malformed_tool_call_is_a_malformed_answer(call: dict[str, Any]) -> None:
    """TypeError/KeyError: what common.providers.error_blocks.malformed_answers turns into a 502."""
    with pytest.raises((TypeError, KeyError)):
        _tool_call(call)


def test_a_negative_or_non_integer_stream_index_is_malformed() -> None:
    with pytest.raises(TypeError):
        _CallIndexes().piece({"index": -1, "id": "a", "function": {"name": "f"}})
    with pytest.raises(TypeError):
        _CallIndexes().piece({"index": True, "function": {}})


def test_a_vendor_whose_turns_alternate_refuses_tools_and_tool_turns_before_any_hold() -> None:
    provider = OpenAICompatProvider(UpstreamClient(), "http://x", None, alternate_turns=True)
    with pytest.raises(InvalidRequest) as refused:
        provider.refuse_unsendable([{"role": "user", "content": "hi"}], None, TOOLS)
    assert refused.value.param == "tools"
    with pytest.raises(InvalidRequest) as refused:
        provider.refuse_unsendable(CONVERSATION)
    assert refused.value.param == "messages"
    provider.refuse_unsendable([{"role": "user", "content": "hi"}])  # no tools: sendable
    OpenAICompatProvider(UpstreamClient(), "http://x", None).refuse_unsendable(CONVERSATION, None, TOOLS)
