"""GeminiChatProvider's function tools in the answers: tool calls answered by the fake Gemini API
over HTTP, plain and streamed, and the next turn that sends them back."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from common.providers.base import Usage
from common.providers.gemini import GeminiChatProvider
from common.providers.gemini_tools import SKIP_SIGNATURE, carried_by
from tests.common.providers.gemini_tools_helpers import TOOLS, asking, function_call, response_names, result
from tests.common.providers.helpers import API_KEY, chat_request, collect, text_of
from tests.fakes import Behaviour, FakeUpstream
from tests.fakes.gemini_upstream import signature_for

pytestmark = pytest.mark.anyio


def provider_for(fake: FakeUpstream, client: httpx.AsyncClient) -> GeminiChatProvider:
    return GeminiChatProvider(client, fake.base_url, API_KEY)


# Answers from the fake Gemini API.

async def test_an_answer_with_function_calls_finishes_as_tool_calls(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    gemini_fake.behaviour = Behaviour(answer="Checking.", tool_calls=[("get_weather", {"city": "Paris"}),
                                                                       ("get_time", {"tz": "CET"})])
    result = await provider_for(gemini_fake, client).complete(chat_request(tools=TOOLS, tool_choice="required"))
    assert result.content == "Checking."
    assert result.finish_reason == "tool_calls"
    assert result.usage == Usage(12, 9)
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]
    first, second = result.tool_calls
    assert first.id != second.id
    assert carried_by(first.id).signature == signature_for("get_weather")
    assert carried_by(second.id).signature is None
    sent = gemini_fake.last_request.json
    assert sent["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


async def test_an_answer_of_calls_alone_has_empty_content(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    gemini_fake.behaviour = Behaviour(answer="", tool_calls=[("get_time", {})])
    result = await provider_for(gemini_fake, client).complete(chat_request(tools=TOOLS))
    assert (result.content, result.finish_reason) == ("", "tool_calls")
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_time", "{}")]


async def test_a_stream_yields_each_call_whole_numbered_across_chunks(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    gemini_fake.behaviour = Behaviour(answer="Checking now.", tool_calls=[("get_weather", {"city": "Paris"}),
                                                                           ("get_time", {"tz": "CET"})])
    deltas, error = await collect(provider_for(gemini_fake, client), chat_request(tools=TOOLS))
    assert error is None
    assert text_of(deltas) == "Checking now."
    pieces = [piece for d in deltas for piece in d.tool_calls]
    assert [len(d.tool_calls) for d in deltas if d.tool_calls] == [1, 1]  # one chunk each, as the fake sent them
    assert [(p.index, p.name, json.loads(p.arguments)) for p in pieces] == [
        (0, "get_weather", {"city": "Paris"}), (1, "get_time", {"tz": "CET"})]
    assert all(p.id for p in pieces) and pieces[0].id != pieces[1].id
    assert carried_by(pieces[0].id or "").signature == signature_for("get_weather")
    assert deltas[-1].finish_reason == "tool_calls"
    assert deltas[-1].usage == Usage(12, 9)
    assert all(d.prompt_tokens == 12 for d in deltas[:-1])


async def test_a_stream_without_calls_still_finishes_as_stop(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    deltas, _ = await collect(provider_for(gemini_fake, client), chat_request(tools=TOOLS))
    assert deltas[-1].finish_reason == "stop"
    assert all(d.tool_calls == [] for d in deltas)


@pytest.mark.parametrize("stream", [False, True])
async def test_calls_cut_by_the_token_limit_finish_as_length(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient, stream: bool
) -> None:
    gemini_fake.behaviour = Behaviour(answer="", tool_calls=[("get_time", {})], finish="MAX_TOKENS")
    provider = provider_for(gemini_fake, client)
    if stream:
        deltas, _ = await collect(provider, chat_request(tools=TOOLS))
        assert deltas[-1].finish_reason == "length"
        assert deltas[0].tool_calls[0].name == "get_time"
    else:
        assert (await provider.complete(chat_request(tools=TOOLS))).finish_reason == "length"


async def test_the_next_turn_sends_the_signature_back_and_gemini_3_takes_it(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """The fake, like Gemini 3, answers 400 to a call sent back without its signature."""
    gemini_fake.behaviour = Behaviour(answer="", tool_calls=[("get_weather", {"city": "Rome"}), ("get_time", {})])
    provider = provider_for(gemini_fake, client)
    question = {"role": "user", "content": "Weather and time in Rome?"}
    first = await provider.complete(chat_request(tools=TOOLS, messages=[question]))
    gemini_fake.behaviour = Behaviour(answer="Sunny, noon.")
    messages = [question, {"role": "assistant", "content": None,
                           "tool_calls": [c.openai_view() for c in first.tool_calls]},
                {"role": "tool", "tool_call_id": first.tool_calls[1].id, "content": "noon"},
                {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": '{"sky": "sunny"}'}]
    second = await provider.complete(chat_request(tools=TOOLS, messages=messages))
    assert (second.content, second.finish_reason, second.tool_calls) == ("Sunny, noon.", "stop", [])
    model_turn, results = gemini_fake.last_request.json["contents"][1:]
    assert model_turn["parts"][0]["thoughtSignature"] == signature_for("get_weather")
    assert "thoughtSignature" not in model_turn["parts"][1]
    assert results["parts"] == [
        {"functionResponse": {"name": "get_time", "response": {"output": "noon"}}},
        {"functionResponse": {"name": "get_weather", "response": {"sky": "sunny"}}}]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_conversation_begun_with_a_vendor_that_numbers_calls_per_turn_goes_on_at_gemini(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient, stream: bool
) -> None:
    """Two turns whose calls share an id ("call_0", of two functions), then the user's words and a
    Gemini call; the fake, as Gemini, refuses a response not named after its turn's call and a
    response Content with the user's text in it."""
    provider = provider_for(gemini_fake, client)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris, then the time?"},
        asking(function_call("get_weather", {"city": "Paris"}, "call_0")), result("call_0", "18°C"),
        asking(function_call("get_time", {}, "call_0")), result("call_0", "14:05"),
        {"role": "user", "content": "Thanks. And in Oslo?"},
    ]
    gemini_fake.behaviour = Behaviour(answer="", tool_calls=[("get_weather", {"city": "Oslo"})])
    reply = await provider.complete(chat_request(tools=TOOLS, messages=messages))
    messages += [asking(*[c.openai_view() for c in reply.tool_calls]), result(reply.tool_calls[0].id, "Snow")]
    gemini_fake.behaviour = Behaviour(answer="Snow in Oslo.")
    request = chat_request(tools=TOOLS, messages=messages)
    if stream:
        deltas, error = await collect(provider, request)
        assert error is None and text_of(deltas) == "Snow in Oslo."
    else:
        assert (await provider.complete(request)).content == "Snow in Oslo."
    sent = gemini_fake.last_request.json
    assert [content["role"] for content in sent["contents"]] == ["user", "model", "user", "model", "user", "user",
                                                                 "model", "user"]
    assert response_names(sent) == [[], [], ["get_weather"], [], ["get_time"], [], [], ["get_weather"]]
    assert sent["contents"][5]["parts"] == [{"text": "Thanks. And in Oslo?"}]
    assert sent["contents"][6]["parts"][0]["thoughtSignature"] == signature_for("get_weather")


def model_turn(*calls: tuple[str, str | None]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    for name, gemini_id in calls:
        parts.append({"functionCall": {"name": name, "args": {}} | ({"id": gemini_id} if gemini_id else {}),
                      "thoughtSignature": SKIP_SIGNATURE})
    return {"role": "model", "parts": parts}


def responses(*answers: tuple[str, str | None], text: str | None = None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"functionResponse": {"name": name, "response": {"output": "x"}} | ({"id": gemini_id} if gemini_id else {})}
        for name, gemini_id in answers]
    return {"role": "user", "parts": parts + ([{"text": text}] if text else [])}


@pytest.mark.parametrize(("contents", "refusal"), [
    ([model_turn(("get_time", None)), responses(("get_time", None), text="Thanks")], "Requests ending with a model"),
    ([model_turn(("get_time", None), ("get_weather", None)), responses(("get_time", None))], "the number of function"),
    ([model_turn(("get_time", None)), responses(("get_weather", None))], "The functionResponse names"),
    ([model_turn(("get_time", "a"), ("get_weather", "b")), responses(("get_time", "b"), ("get_weather", "a"))],
     "The functionResponse of id 'b'"),
    ([model_turn(("get_time", None)), responses(("get_time", None)), responses(("get_time", None))],
     "function response turn comes immediately after a function call turn"),
])
async def test_the_fake_refuses_function_responses_gemini_refuses(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient, contents: list[dict[str, Any]], refusal: str
) -> None:
    """What makes the tests above able to fail: the fake checks a turn's responses as Gemini does."""
    body = {"contents": [{"role": "user", "parts": [{"text": "Time?"}]}, *contents]}
    response = await client.post(f"{gemini_fake.base_url}/models/m:generateContent", json=body)
    assert response.status_code == 400
    assert refusal in response.json()["error"]["message"]
    fixed = [{"role": "user", "parts": [{"text": "Time?"}]}, model_turn(("get_time", "a"), ("get_weather", None)),
             responses(("get_weather", None), ("get_time", "a")), {"role": "user", "parts": [{"text": "Thanks"}]}]
    assert (await client.post(f"{gemini_fake.base_url}/models/m:generateContent", json={"contents": fixed})).is_success


async def test_the_fake_refuses_a_call_sent_back_without_a_signature(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """What makes the test above able to fail: the fake checks what Gemini 3 checks."""
    body = {"contents": [{"role": "user", "parts": [{"text": "Time?"}]},
                         {"role": "model", "parts": [{"functionCall": {"name": "get_time", "args": {}}}]},
                         {"role": "user", "parts": [{"functionResponse": {"name": "get_time",
                                                                          "response": {"output": "noon"}}}]}]}
    response = await client.post(f"{gemini_fake.base_url}/models/m:generateContent", json=body)
    assert response.status_code == 400
    assert "thought_signature" in response.json()["error"]["message"]
