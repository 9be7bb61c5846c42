"""Function tools in the simulated provider: when it calls one, which, and with what arguments.

Deterministic, like its answers. With tools offered (and tool_choice not "none") it calls one
when the conversation ends with the user's turn, or always when tool_choice is "required" or
names a tool; after the tools' results (the conversation ends with tool messages) it answers in
text, so a client's usual loop (call, run the tools, send the results, read the answer) ends.
The tool: the one named, else the one whose name and description share the most words with the
user's last message (the first on a tie). Its arguments: every required property of its
`parameters` schema (every property when none is required), each a value of the schema's type:
the first of an `enum`, for a string the question's last capitalised word after its first (a name:
"What is the weather in Paris?" gives "Paris"), else the question; 1 for a number, true, [], or an object
of its own properties by the same rule (`sample_of`, which a JSON answer's schema uses too).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from common.providers.base import ChatRequest, ToolCall
from common.providers.messages import message_text, role_of

_WORD = re.compile(r"[a-z0-9]+")
_NAME_WORD = re.compile(r"[^\W\d_][\w'-]*")
_QUESTION_CHARS = 200
_SAMPLE_BY_TYPE: dict[str, Any] = {"integer": 1, "number": 1, "boolean": True, "array": [], "null": None}
_MAX_DEPTH = 16  # a schema that refers to itself ends as a string there


def tool_call_for(request: ChatRequest) -> ToolCall | None:
    """The call the simulated model makes for this request, or None when it answers in text."""
    tools = [tool["function"] for tool in request.tools or ()]
    choice = request.tool_choice
    if not tools or choice == "none":
        return None
    last = next((m for m in reversed(request.messages) if role_of(m) != "system"), None)
    forced = choice == "required" or isinstance(choice, dict)
    if not forced and (last is None or last.get("role") != "user"):
        return None
    question = last_question(request.messages)
    if isinstance(choice, dict):
        tool = next(t for t in tools if t["name"] == choice["function"]["name"])
    else:
        tool = max(tools, key=lambda t: _shared_words(question, t))  # max keeps the first of equals
    arguments = json.dumps(_arguments(tool.get("parameters") or {}, string_value(question)), ensure_ascii=False)
    digest = hashlib.sha256(repr([(m.get("role"), message_text(m)) for m in request.messages]).encode())
    return ToolCall("call_" + digest.hexdigest()[:24], tool["name"], arguments)


def results_answered(messages: list[dict[str, Any]]) -> str | None:
    """The sentence a text answer after tool results begins with (None when the conversation does
    not end with them): which functions returned what, in short."""
    results: list[str] = []
    names = {call["id"]: call["function"]["name"] for m in messages for call in m.get("tool_calls") or ()}
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        gist = " ".join(message_text(message, " ").split()[:12])
        results.append(f"{names.get(message['tool_call_id'], 'a tool')} returned “{gist}”")
    return "Of the tools you ran, " + "; ".join(reversed(results)) + "." if results else None


def last_question(messages: list[dict[str, Any]]) -> str:
    """The user's last message as text (its first characters): what a call's arguments come from."""
    return next((message_text(m, " ") for m in reversed(messages) if m.get("role") == "user"), "")[:_QUESTION_CHARS]


def string_value(question: str) -> str:
    """What a string argument or field gets: the question's last capitalised word after its first
    (most often the name it is about), else the whole question."""
    names = _NAME_WORD.findall(question)[1:]
    capitalised = [word for word in names if word[0].isupper()]
    return capitalised[-1] if capitalised else question


def _shared_words(question: str, tool: dict[str, Any]) -> int:
    asked = set(_WORD.findall(question.lower()))
    described = _WORD.findall((tool["name"].replace("_", " ") + " " + (tool.get("description") or "")).lower())
    return len(asked & set(described))


def _arguments(schema: dict[str, Any], question: str) -> dict[str, Any]:
    value = sample_of(schema, question)
    return value if isinstance(value, dict) else {}


def sample_of(schema: Any, question: str, root: Any = None, depth: int = 0) -> Any:
    """A value of a JSON Schema, by the rule in the module's docstring: an object's required
    properties (all when none is), each a value of its own schema; `$ref`s to the root's `$defs`
    (how pydantic writes nested models) followed, `anyOf`/`oneOf` their first non-null choice."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return question
    if isinstance(ref := schema.get("$ref"), str) and ref.startswith("#/$defs/") and isinstance(root, dict):
        return sample_of((root.get("$defs") or {}).get(ref.removeprefix("#/$defs/")), question, root, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        choices = [c for c in schema.get(key) or () if not (isinstance(c, dict) and c.get("type") == "null")]
        if choices:
            return sample_of(choices[0], question, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and isinstance(schema.get("properties"), dict)):
        found = schema.get("properties")
        properties: dict[str, Any] = found if isinstance(found, dict) else {}
        required = schema.get("required")
        names = [n for n in required if n in properties] if isinstance(required, list) and required else list(
            properties)
        return {name: sample_of(properties[name], question, root, depth + 1) for name in names}
    return _SAMPLE_BY_TYPE.get(kind, question) if isinstance(kind, str) else question
