"""Function tools in Anthropic's Messages API: OpenAI's tools, tool calls and results translated
to Anthropic's blocks and fields, and its tool_use blocks (plain and streamed) back to OpenAI's.

- A definition's `parameters` become `input_schema` (a type-object schema with no properties when
  absent); OpenAI's `strict` is not sent (Anthropic's own needs a beta header).
- A call's `arguments` text becomes `input`, which must be a JSON object (blank text: {}). A call
  id Anthropic would refuse (its ids match `[a-zA-Z0-9_-]+`; other vendors' may not, such as
  Kimi's "functions.get_weather:0") is sent as a derived one, the same in its tool_use and its
  tool_result blocks.
- Anthropic refuses a tool_use id used twice in a conversation; OpenAI's rule is only that a turn's
  results answer that turn's calls, and vendors that number calls per turn reuse ids. A call id
  already used earlier is sent with its message's position added, and a result names the id of
  the call it answers: the one of its id in the nearest assistant message before it.
- Anthropic refuses tool_use and tool_result blocks in a request without `tools`, which OpenAI
  takes: the called functions are then declared (no schema) with tool_choice none, so the model
  reads the earlier calls and makes none, as it would on OpenAI.
- An answer's `input` comes back as `json.dumps(input, ensure_ascii=False)`: ", " and ": " as in
  the JSON text Anthropic streams, so a call reads about the same streamed or not.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from common.errors import InvalidRequest
from common.providers.base import ChatRequest, ToolCall, ToolCallDelta
from common.providers.messages import message_text, role_of, tool_calls_of
from common.providers.vendor_bodies import NOT_JSON

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # Anthropic's rule for a tool's name (OpenAI's too)
_ID = re.compile(r"[a-zA-Z0-9_-]+")  # and for a tool_use block's id
_NOT_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
_CHOICES: dict[str, dict[str, Any]] = {"auto": {"type": "auto"}, "required": {"type": "any"},
                                       "none": {"type": "none"}}


def refuse_unsendable_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> None:
    """A 400 before anything is held for what Anthropic would refuse after the hold: a tool name
    outside its rule or parameters that are not an object's schema (param "tools"), a call whose
    arguments are not a JSON object (param "messages")."""
    for tool in tools or ():
        function = tool["function"]
        if not _NAME.fullmatch(function["name"]):
            raise InvalidRequest(f"Anthropic's models take tool names of 1 to 64 letters, digits, _ or -, "
                                 f"not {function['name']!r}.", param="tools")
        _input_schema(function)
    for message in messages:
        for call in tool_calls_of(message):
            call_input(call)


def tool_fields(request: ChatRequest) -> dict[str, Any]:
    """The body's `tools` and `tool_choice` for a request: none without tools, unless the
    conversation has tool calls (see the module's docstring)."""
    if request.tools:
        fields: dict[str, Any] = {"tools": [_definition(tool["function"]) for tool in request.tools]}
        choice = _tool_choice(request.tool_choice, request.parallel_tool_calls)
        return fields | ({"tool_choice": choice} if choice is not None else {})
    called = list(dict.fromkeys(call.name for message in request.messages for call in tool_calls_of(message)))
    if not called:
        return {}
    return {"tools": [{"name": name, "input_schema": dict(_EMPTY_SCHEMA)} for name in called],
            "tool_choice": dict(_CHOICES["none"])}


def _definition(function: dict[str, Any]) -> dict[str, Any]:
    definition: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        definition["description"] = function["description"]
    definition["input_schema"] = _input_schema(function)
    return definition


def _input_schema(function: dict[str, Any]) -> dict[str, Any]:
    """Anthropic needs `"type": "object"` at the top; OpenAI takes parameters without a type."""
    parameters = function.get("parameters") or {}
    if parameters.get("type", "object") != "object":
        raise InvalidRequest(f"The parameters of tool {function['name']!r} must be the JSON Schema of an object "
                             "(\"type\": \"object\").", param="tools")
    return {"type": "object", **parameters} if parameters else dict(_EMPTY_SCHEMA)


def _tool_choice(choice: str | dict[str, Any] | None, parallel: bool | None) -> dict[str, Any] | None:
    """Anthropic's tool_choice; `disable_parallel_tool_use` rides on it (not on "none", which takes none)."""
    if isinstance(choice, dict):
        chosen: dict[str, Any] = {"type": "tool", "name": choice["function"]["name"]}
    elif choice is not None:
        chosen = dict(_CHOICES[choice])
    elif parallel is False:
        chosen = {"type": "auto"}
    else:
        return None
    if parallel is False and chosen["type"] != "none":
        chosen["disable_parallel_tool_use"] = True
    return chosen


def call_input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as Anthropic's `input`, an object; InvalidRequest when they are not one."""
    if not call.arguments.strip():
        return {}
    try:
        value = json.loads(call.arguments)
    except NOT_JSON:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(f"The arguments of tool call {call.id!r} are not a JSON object, which Anthropic's "
                             "models need.", param="messages")
    return value


def anthropic_id(call_id: str) -> str:
    """The id as Anthropic takes it: itself when it may be one, else a derived one (its invalid
    characters replaced, and a digest of the whole so two ids cannot become one)."""
    if _ID.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:16]
    return f"{_NOT_ID_CHARS.sub('_', call_id)}_{digest}"


def with_unique_call_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with its call ids as Anthropic gets them: each of its alphabet
    (anthropic_id) and used once; a tool message's id that of the call it answers, the call of that
    id in the nearest assistant message before it. An id's first use is sent as anthropic_id makes
    it, and a repeat's id depends only on the messages up to it, so a conversation that grows sends
    its earlier turns unchanged (as Anthropic's prompt cache needs)."""
    used: set[str] = set()
    sent: dict[str, str] = {}  # the calls of the nearest assistant message: the client's id -> the id sent
    rewritten: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        if message.get("role") == "tool":
            call_id = message["tool_call_id"]
            message = {**message, "tool_call_id": sent.get(call_id) or anthropic_id(call_id)}
        elif role_of(message) == "assistant":
            sent = {call.id: _unused_id(anthropic_id(call.id), position, used) for call in tool_calls_of(message)}
            if sent:
                calls = [{**call, "id": sent[call["id"]]} for call in message["tool_calls"]]
                message = {**message, "tool_calls": calls}
        rewritten.append(message)
    return rewritten


def _unused_id(block_id: str, position: int, used: set[str]) -> str:
    """`block_id` if no call before took it, else it with the position of its message (and a count,
    should a client's own id have taken that too); recorded in `used`."""
    unused, count = block_id, 1
    while unused in used:
        unused = f"{block_id}_m{position}" + (f"_{count}" if count > 1 else "")
        count += 1
    used.add(unused)
    return unused


def tool_use_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An assistant message's tool calls as tool_use blocks."""
    return [{"type": "tool_use", "id": anthropic_id(call.id), "name": call.name, "input": call_input(call)}
            for call in tool_calls_of(message)]


def tool_result_block(message: dict[str, Any]) -> dict[str, Any]:
    """A tool message as a tool_result block: its text (parts joined as they are); a blank result
    leaves `content` out, which Anthropic takes (a blank text block it refuses)."""
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": anthropic_id(message["tool_call_id"])}
    text = message_text(message)
    if text.strip():
        block["content"] = text
    return block


def block_rank(block: dict[str, Any]) -> int:
    """The order of a turn's blocks (a stable sort): tool_result blocks first, as Anthropic requires
    of a user turn, and tool_use blocks after the assistant's text."""
    return {"tool_result": 0, "tool_use": 2}.get(block["type"], 1)


def answer_tool_calls(content: list[dict[str, Any]]) -> list[ToolCall]:
    """The tool_use blocks of an answer's content as tool calls."""
    return [_tool_call(block) for block in content if block.get("type") == "tool_use"]


def _tool_call(block: dict[str, Any]) -> ToolCall:
    if not isinstance(block["id"], str) or not isinstance(block["name"], str) or not isinstance(block["input"], dict):
        raise TypeError("a tool_use block's id, name or input is of the wrong type")
    return ToolCall(block["id"], block["name"], json.dumps(block["input"], ensure_ascii=False))


@dataclass(slots=True)
class StreamedToolCalls:
    """Reads a stream's tool_use blocks as OpenAI's tool call pieces: call k (0, 1, ... in the
    order its block starts) whatever the block's own index among the text blocks."""

    calls: dict[int, int] = field(default_factory=dict)  # the call number of each tool_use block's index
    started: dict[int, dict[str, Any]] = field(default_factory=dict)  # a block's input, until its JSON streams

    def read(self, kind: str | None, data: dict[str, Any]) -> ToolCallDelta | None:
        """The piece a content block event gives, or None (text blocks, other events, empty JSON)."""
        index = data.get("index")
        if kind == "content_block_start":
            return self._start(index, data.get("content_block") or {})
        if index not in self.calls:
            return None
        if kind == "content_block_delta":
            return self._fragment(index, data.get("delta") or {})
        if kind == "content_block_stop" and index in self.started:
            # no JSON was streamed (a call without arguments may send none): the input it started with
            return ToolCallDelta(self.calls[index], arguments=json.dumps(self.started.pop(index), ensure_ascii=False))
        return None

    def _start(self, index: Any, block: dict[str, Any]) -> ToolCallDelta | None:
        if block.get("type") != "tool_use":
            return None
        if not isinstance(index, int) or not isinstance(block["id"], str) or not isinstance(block["name"], str):
            raise TypeError("a tool_use block's index, id or name is of the wrong type")
        self.calls[index] = len(self.calls)
        self.started[index] = block.get("input") or {}
        return ToolCallDelta(self.calls[index], id=block["id"], name=block["name"])

    def _fragment(self, index: int, delta: dict[str, Any]) -> ToolCallDelta | None:
        if delta.get("type") != "input_json_delta":
            return None
        fragment = delta["partial_json"]
        if not isinstance(fragment, str):
            raise TypeError("an input_json_delta's partial_json is not a string")
        if not fragment:
            return None
        self.started.pop(index, None)
        return ToolCallDelta(self.calls[index], arguments=fragment)
