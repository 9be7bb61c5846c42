"""What the Anthropic tool tests share: the tools, a call's turn and its result, the tool blocks sent."""

from __future__ import annotations

from typing import Any

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def asking(*calls: dict[str, Any], content: Any = None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def result(call_id: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def tool_blocks(body: dict[str, Any], kind: str, key: str) -> list[list[str]]:
    """Per message sent, the `key` of each of its blocks of type `kind`."""
    return [[block[key] for block in message["content"] if block["type"] == kind] for message in body["messages"]]
