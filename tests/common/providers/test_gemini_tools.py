"""GeminiChatProvider's function tools: their translation both ways, thought signatures carried in
the call ids, the refusals, and tool calls answered by the fake Gemini API over HTTP."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx
import pytest

from common.errors import InvalidRequest
from common.providers.base import Usage
from common.providers.gemini import GeminiChatProvider, build_body
from common.providers.gemini_tools import MAX_CALL_ID, SKIP_SIGNATURE, Carried, call_id, calls_in, carried_by
from common.providers.http import UpstreamClient
from tests.common.providers.helpers import API_KEY, chat_request, collect, text_of
from tests.fakes import Behaviour, FakeUpstream
from tests.fakes.gemini_upstream import signature_for

pytestmark = pytest.mark.anyio

WEATHER_SCHEMA = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                  "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                      "parameters": WEATHER_SCHEMA, "strict": True}},
    {"type": "function", "function": {"name": "get_time"}},
]
SIGNATURE = base64.b64encode(b"\x0a\x04sig!\xff" * 5).decode()


def function_call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def provider_for(fake: FakeUpstream, client: httpx.AsyncClient) -> GeminiChatProvider:
    return GeminiChatProvider(client, fake.base_url, API_KEY)


# The request: tools, tool_choice, calls and results.

def test_tools_become_function_declarations_with_their_json_schema_as_it_is() -> None:
    body = build_body(chat_request(tools=TOOLS, parallel_tool_calls=False))
    assert body["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "The weather in a city", "parametersJsonSchema": WEATHER_SCHEMA},
        {"name": "get_time"},
    ]}]
    assert "toolConfig" not in body  # no tool_choice: Gemini's default, AUTO
    assert body == build_body(chat_request(tools=TOOLS))  # parallel_tool_calls has no Gemini counterpart


def test_a_request_without_tools_sends_no_tool_fields() -> None:
    body = build_body(chat_request(tool_choice="none"))
    assert "tools" not in body and "toolConfig" not in body


@pytest.mark.parametrize(("choice", "config"), [
    ("auto", {"mode": "AUTO"}),
    ("required", {"mode": "ANY"}),
    ("none", {"mode": "NONE"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
])
def test_tool_choice_becomes_the_function_calling_mode(choice: str | dict[str, Any], config: dict[str, Any]) -> None:
    assert build_body(chat_request(tools=TOOLS, tool_choice=choice))["toolConfig"] == {"functionCallingConfig": config}


def test_a_conversation_with_calls_and_results_becomes_function_calls_and_responses() -> None:
    """Results name their function by the call they answer (here in another order than the calls);
    a JSON object result is sent as the object, any other result as {"output": text}; calls from
    another vendor carry no signature, so the first gets Google's placeholder."""
    body = build_body(chat_request(tools=TOOLS, messages=[
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            function_call("get_weather", {"city": "Paris"}, "call_w"),
            function_call("get_time", {}, "toolu_t"),
        ]},
        {"role": "tool", "tool_call_id": "toolu_t", "content": [{"type": "text", "text": "10:"},
                                                                {"type": "text", "text": "42"}]},
        {"role": "tool", "tool_call_id": "call_w", "content": '{"sky": "clear", "celsius": 21}'},
        {"role": "user", "content": "Thanks. Tomorrow?"},
        {"role": "assistant", "content": None, "tool_calls": [function_call("get_weather", {"city": "Paris"}, "c3")]},
        {"role": "tool", "tool_call_id": "c3", "content": "[1, 2]"},
    ]))
    assert body["systemInstruction"] == {"parts": [{"text": "Use the tools."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
        {"role": "model", "parts": [
            {"text": "Checking."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SKIP_SIGNATURE},
            {"functionCall": {"name": "get_time", "args": {}}},
        ]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_time", "response": {"output": "10:42"}}},
            {"functionResponse": {"name": "get_weather", "response": {"sky": "clear", "celsius": 21}}},
        ]},
        {"role": "user", "parts": [{"text": "Thanks. Tomorrow?"}]},  # apart from the results: see below
        {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SKIP_SIGNATURE},
        ]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "[1, 2]"}}}]},
    ]


def asking(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


def result(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def response_names(body: dict[str, Any]) -> list[list[str]]:
    """Per Content sent, the name of each of its functionResponse parts."""
    return [[part["functionResponse"]["name"] for part in content["parts"] if "functionResponse" in part]
            for content in body["contents"]]


def test_a_call_id_reused_in_later_turns_names_each_response_after_its_own_turns_call() -> None:
    """Vendors that number calls per turn reuse an id in the next turn (a conversation begun there
    may go on with a Gemini model): a result answers the call of its id in the turn before it."""
    body = build_body(chat_request(tools=TOOLS, messages=[
        {"role": "user", "content": "Weather in Paris, then the time?"},
        asking(function_call("get_weather", {"city": "Paris"}, "call_0"), function_call("get_time", {}, "call_1")),
        result("call_1", "noon"), result("call_0", "Sun"),
        asking(function_call("get_time", {}, "call_0")), result("call_0", "14:05"),
        asking(function_call("get_weather", {"city": "Oslo"}, "call_1"), function_call("get_time", {}, "call_0")),
        result("call_0", "15:00"), result("call_1", "Snow"),
    ]))
    assert response_names(body) == [[], [], ["get_time", "get_weather"], [], ["get_time"], [],
                                    ["get_time", "get_weather"]]
    outputs = [part["functionResponse"]["response"]["output"] for content in body["contents"]
               for part in content["parts"] if "functionResponse" in part]
    assert outputs == ["noon", "Sun", "14:05", "15:00", "Snow"]


def test_a_users_words_after_tool_results_go_in_a_content_of_their_own() -> None:
    """Newer Gemini models refuse a Content that mixes functionResponse parts with others (a
    misleading "Requests ending with a model turn are not supported."): the results' Content holds
    the responses alone, the user's text and images follow in the next one."""
    image = {"type": "image_url", "image_url": {"url": "https://img.test/sky.png"}}
    body = build_body(chat_request(tools=TOOLS, messages=[
        {"role": "user", "content": "Weather?"},
        asking(function_call("get_weather", {"city": "Oslo"}, "c1"), function_call("get_time", {}, "c2")),
        result("c1", "Snow"), result("c2", "noon"),
        {"role": "user", "content": [{"type": "text", "text": "Thanks. And this sky?"}, image]},
        {"role": "user", "content": "Be brief."},
    ]))
    assert body["contents"][2:] == [
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "Snow"}}},
                                   {"functionResponse": {"name": "get_time", "response": {"output": "noon"}}}]},
        {"role": "user", "parts": [{"text": "Thanks. And this sky?"},
                                   {"fileData": {"mimeType": "image/png", "fileUri": "https://img.test/sky.png"}},
                                   {"text": "Be brief."}]},
    ]


# Thought signatures and Gemini's call ids, carried in our call ids.

def test_a_thought_signature_comes_back_on_its_call_through_the_call_id() -> None:
    calls = calls_in([
        {"text": "Checking."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": SIGNATURE},
        {"functionCall": {"name": "get_time"}},
    ])
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"}), ("get_time", {})]
    body = build_body(chat_request(messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [c.openai_view() for c in calls]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "rain"},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"},
    ]))
    assert body["contents"][1]["parts"] == [
        {"text": "Checking."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": SIGNATURE},
        {"functionCall": {"name": "get_time", "args": {}}},  # a parallel call: Gemini signs only the first
    ]
    assert [p["functionResponse"]["name"] for p in body["contents"][2]["parts"]] == ["get_weather", "get_time"]


def test_geminis_own_call_id_comes_back_on_the_call_and_its_response() -> None:
    [call] = calls_in([{"functionCall": {"id": "fc-7", "name": "get_time", "args": {}}, "thoughtSignature": SIGNATURE}])
    body = build_body(chat_request(messages=[
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": None, "tool_calls": [call.openai_view()]},
        {"role": "tool", "tool_call_id": call.id, "content": "noon"},
    ]))
    assert body["contents"][1]["parts"] == [
        {"functionCall": {"id": "fc-7", "name": "get_time", "args": {}}, "thoughtSignature": SIGNATURE}]
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"id": "fc-7", "name": "get_time", "response": {"output": "noon"}}}]


def test_call_ids_are_unique_and_safe_for_any_vendor() -> None:
    """Other vendors take only [A-Za-z0-9_-] in a call id (Anthropic): a conversation may move on."""
    ids = [call_id(None, None), call_id(None, None), call_id(None, SIGNATURE), call_id(None, SIGNATURE),
           call_id("fc-1", None), call_id("fc-1", None)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"call_[A-Za-z0-9_-]+", i) and len(i) <= MAX_CALL_ID for i in ids)
    assert carried_by(ids[0]) == Carried(None, None)
    assert carried_by(ids[2]) == Carried(None, SIGNATURE)
    assert carried_by(ids[4]) == Carried("fc-1", None)


@pytest.mark.parametrize("foreign", ["call_abc123", "toolu_01A", "call_gsig_", "call_gsig_!!", "call_gsig_AAAA",
                                     "call_gsig_" + base64.urlsafe_b64encode(b"\x02" + bytes(7)).decode()])
def test_another_vendors_or_a_mangled_id_carries_nothing(foreign: str) -> None:
    assert carried_by(foreign) == Carried(None, None)


def test_a_signature_too_long_to_come_back_is_dropped_and_replaced_by_the_placeholder() -> None:
    """api.schemas.chat refuses longer call ids: carrying it would break the client's next request."""
    long_signature = base64.b64encode(bytes(range(256)) * (MAX_CALL_ID // 256 + 1)).decode()
    calls = calls_in([{"functionCall": {"name": "get_time", "args": {}}, "thoughtSignature": long_signature}])
    assert len(calls[0].id) <= MAX_CALL_ID and carried_by(calls[0].id) == Carried(None, None)
    body = build_body(chat_request(messages=[
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": None, "tool_calls": [calls[0].openai_view()]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "noon"},
    ]))
    assert body["contents"][1]["parts"][0]["thoughtSignature"] == SKIP_SIGNATURE


def test_a_signature_that_is_not_base64_is_not_carried() -> None:
    assert carried_by(call_id(None, "not base64!")) == Carried(None, None)


# Refusals before anything is held.

@pytest.mark.parametrize("arguments", ["[1, 2]", "not json", "", '"text"', '{"x": NaN}',
                                       '{"n": 123456789012345678901234567890}'])
def test_call_arguments_that_are_not_a_json_object_are_refused(arguments: str) -> None:
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "noon"}]
    provider = GeminiChatProvider(UpstreamClient(), "http://x", None)
    with pytest.raises(InvalidRequest) as refused:
        provider.refuse_unsendable(messages, tools=TOOLS)
    assert refused.value.param == "messages"
    with pytest.raises(InvalidRequest):
        build_body(chat_request(messages=messages))


@pytest.mark.parametrize("name", ["1st_tool", "-tool", "x" * 65])
def test_a_function_name_gemini_refuses_is_refused(name: str) -> None:
    provider = GeminiChatProvider(UpstreamClient(), "http://x", None)
    with pytest.raises(InvalidRequest) as refused:
        provider.refuse_unsendable([{"role": "user", "content": "Hi"}],
                                   tools=[*TOOLS, {"type": "function", "function": {"name": name}}])
    assert refused.value.param == "tools"
    called = [{"role": "user", "content": "Hi"},
              {"role": "assistant", "content": None, "tool_calls": [function_call(name, {}, "c1")]},
              {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    with pytest.raises(InvalidRequest) as refused:
        provider.refuse_unsendable(called)
    assert refused.value.param == "messages"


def test_parameters_with_a_number_gemini_cannot_take_are_refused() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "integer", "maximum": 2**70}}}
    with pytest.raises(InvalidRequest) as refused:
        GeminiChatProvider(UpstreamClient(), "http://x", None).refuse_unsendable(
            [{"role": "user", "content": "Hi"}], tools=[tool])
    assert refused.value.param == "tools"


def test_tools_and_calls_gemini_takes_are_not_refused() -> None:
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "", "tool_calls": [function_call("_get-time", {"tz": "CET"}, "c1")]},
                {"role": "tool", "tool_call_id": "c1", "content": "noon"}]
    tools = [*TOOLS, {"type": "function", "function": {"name": "_get-time", "parameters": {"type": "object"}}}]
    GeminiChatProvider(UpstreamClient(), "http://x", None).refuse_unsendable(messages, tools=tools)


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

