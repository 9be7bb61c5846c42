"""GeminiChatProvider's thought signatures and Gemini's call ids, carried in our call ids: read from
an answer's parts, sent back on the call and its response."""

from __future__ import annotations

import base64
import json
import re

import pytest

from common.providers.gemini import build_body
from common.providers.gemini_tools import MAX_CALL_ID, SKIP_SIGNATURE, Carried, call_id, calls_in, carried_by
from tests.common.providers.helpers import chat_request

pytestmark = pytest.mark.anyio

SIGNATURE = base64.b64encode(b"\x0a\x04sig!\xff" * 5).decode()


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
