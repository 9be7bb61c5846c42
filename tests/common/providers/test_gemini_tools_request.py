"""GeminiChatProvider's function tools in the request: tools, tool_choice, calls and results
translated for the Gemini API, and the refusals."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import InvalidRequest
from common.providers.gemini import GeminiChatProvider, build_body
from common.providers.gemini_tools import SKIP_SIGNATURE
from common.providers.http import UpstreamClient
from tests.common.providers.gemini_tools_helpers import (
    TOOLS,
    WEATHER_SCHEMA,
    asking,
    function_call,
    response_names,
    result,
)
from tests.common.providers.helpers import chat_request

pytestmark = pytest.mark.anyio


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
