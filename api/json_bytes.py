"""JSON bytes for every answer, whatever text a provider sent.

orjson refuses a string holding a lone surrogate (`"\\ud83d"` with its pair missing), which
Python's own JSON parser, reading a provider's answer, lets through. Such an answer is charged
before it is written, so a failure to write it was a 500 that the SDK retried, a second call
charged again (an SDK retry hunt found three). Those strings are written by the standard library
instead, as JSON's `\\u` escapes (ASCII only): valid JSON that carries what the provider sent."""

from __future__ import annotations

import json
from typing import Any

import orjson


def json_bytes(content: Any) -> bytes:
    try:
        return orjson.dumps(content)
    except orjson.JSONEncodeError:
        try:
            return json.dumps(content, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError):
            pass
        raise
