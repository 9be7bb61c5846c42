"""Answers carrying a lone surrogate a provider sent (Python's JSON parser lets `"\\ud83d"` through,
orjson refuses to write it): written as JSON escapes, not a 500 after the call was charged."""

from __future__ import annotations

import json

import orjson
import pytest

from api.json_bytes import json_bytes
from api.responses import json_response
from api.sse import sse_data

FROM_A_PROVIDER = json.loads('{"content": "smile \\ud83d", "n": 1.5, "ok": true, "none": null}')


def test_orjson_alone_refuses_it() -> None:
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(FROM_A_PROVIDER)


def test_a_json_answer_and_a_stream_event_carry_it_as_json_escapes() -> None:
    body = json_response(FROM_A_PROVIDER).body
    assert body.isascii() and json.loads(body) == FROM_A_PROVIDER
    event = sse_data({"choices": [{"delta": FROM_A_PROVIDER}]})
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:]) == {"choices": [{"delta": FROM_A_PROVIDER}]}


def test_everything_else_is_orjsons_own_bytes() -> None:
    content = {"content": "smile 😀 café", "n": [1, 2.5, None]}
    assert json_bytes(content) == orjson.dumps(content)


def test_what_neither_can_write_is_still_an_error() -> None:
    with pytest.raises(TypeError):
        json_bytes({"content": object()})
