"""What the Gemini tool tests share: the tools, a call, a call's turn and its result, the names of the
function responses sent."""

from __future__ import annotations

import json
from typing import Any

WEATHER_SCHEMA = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                  "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                      "parameters": WEATHER_SCHEMA, "strict": True}},
    {"type": "function", "function": {"name": "get_time"}},
]


def function_call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def asking(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


def result(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def response_names(body: dict[str, Any]) -> list[list[str]]:
    """Per Content sent, the name of each of its functionResponse parts."""
    return [[part["functionResponse"]["name"] for part in content["parts"] if "functionResponse" in part]
            for content in body["contents"]]
