"""OpenAI function tools in the Gemini API's terms, and Gemini's function calls back in OpenAI's.

- Tools become one `functionDeclarations` tool. OpenAI's `parameters` (JSON Schema) go as
  `parametersJsonSchema`, as they are: `parameters` takes only Google's OpenAPI subset and refuses
  keywords OpenAI schemas carry (additionalProperties, $schema, ...). OpenAI's `strict` has no
  Gemini counterpart and is not sent; nor is `parallel_tool_calls` (Gemini has no such switch).
- `tool_choice`: auto → AUTO, required → ANY, a named function → ANY limited to it, none → NONE.
- A call's result goes back as a `functionResponse` part (in a user turn) named after the call's
  function, the call of its id in the nearest assistant message before it (vendors that number
  calls per turn reuse ids across turns); its `response` is the result itself when that is JSON
  text of an object, else `{"output": text}` (Google's documented key for a function's output).
  A turn's results go in a user Content of their own, and what the user says after them (text,
  images) in the next one: newer models refuse a Content that mixes functionResponse parts with
  others (400 "Requests ending with a model turn are not supported.", reported for
  gemini-3.1-flash-lite and gemini-3.6-flash and later); two user Contents in a row they take.
- Thought signatures: Gemini 3 gives a function call a `thoughtSignature` and answers 400 to a
  later turn that does not send it back on that call's part. We keep no state, so the signature
  (and Gemini's own call id, if it gave one) travels inside the OpenAI call id we return, which
  every client must send back unchanged with the call and its result. A call whose id carries none
  (another vendor's, or a signature too long to carry) gets Google's documented placeholder on the
  first call of its turn, which tells Gemini to skip the check.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from common.errors import InvalidRequest
from common.providers.base import MAX_TOOL_CALL_ID, ToolCall
from common.providers.messages import answered_calls, message_text, tool_calls_of

# Google's rule for a function's name (FunctionDeclaration.name): OpenAI's names may also start with
# a digit or a dash, which Gemini refuses.
FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
# The documented value for a function call whose signature is unknown (thought-signatures FAQ).
SKIP_SIGNATURE = "skip_thought_signature_validator"
# The longest id a request may send back (api.schemas.chat): a signature that does not fit is
# dropped (its call then gets SKIP_SIGNATURE) rather than make the next request a 400.
MAX_CALL_ID = MAX_TOOL_CALL_ID

_CARRIER = "call_gsig_"  # an id that carries a signature or Gemini's id; plain ids are call_<hex>
_VERSION = 1
_NONCE_BYTES = 6
_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


@dataclass(frozen=True, slots=True)
class Carried:
    """What one of our call ids carries: Gemini's id of the call and its thought signature."""

    gemini_id: str | None
    signature: str | None


def tools_field(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's `tools`: one tool holding a declaration per OpenAI function tool."""
    return [{"functionDeclarations": [_declaration(tool["function"]) for tool in tools]}]


def _declaration(function: dict[str, Any]) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    if function.get("parameters"):  # absent or {}: a function without parameters, left unset
        declaration["parametersJsonSchema"] = function["parameters"]
    return declaration


def tool_config(tool_choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """The request's `toolConfig`, or None for Gemini's default (AUTO)."""
    if tool_choice is None:
        return None
    if isinstance(tool_choice, str):
        return {"functionCallingConfig": {"mode": _MODES[tool_choice]}}
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [tool_choice["function"]["name"]]}}


def call_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An assistant message's tool calls as model-turn `functionCall` parts, with their signatures."""
    parts: list[dict[str, Any]] = []
    for index, call in enumerate(tool_calls_of(message)):
        carried = carried_by(call.id)
        function_call: dict[str, Any] = {"name": call.name, "args": call_arguments(call)}
        part: dict[str, Any] = {"functionCall": function_call}
        if carried.gemini_id:
            function_call["id"] = carried.gemini_id
        if carried.signature:
            part["thoughtSignature"] = carried.signature
        elif index == 0:  # Gemini checks the first call of each step
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
    return parts


def naming_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with each tool message naming the function of the call it answers in
    `name` (as OpenAI's older function messages did), None when it answers none."""
    return [{**message, "name": call.name if call is not None else None} if message.get("role") == "tool" else message
            for message, call in zip(messages, answered_calls(messages), strict=True)]


def response_part(message: dict[str, Any]) -> dict[str, Any]:
    """A tool message named by naming_results as a `functionResponse` part."""
    call_id, name = message["tool_call_id"], message["name"]
    if name is None:  # api.schemas.chat_tools.check_tool_turns refuses such a conversation first
        raise InvalidRequest(f"A tool message answers tool call {call_id!r}, which is not a call of the assistant "
                             "message before it.", param="messages")
    text = message_text(message)
    result = _json_object(text)
    function_response: dict[str, Any] = {"name": name, "response": result if result is not None else {"output": text}}
    if gemini_id := carried_by(call_id).gemini_id:
        function_response["id"] = gemini_id
    return {"functionResponse": function_response}


def turn_contents(role: str, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A merged turn as Contents: one, unless it holds function responses and other parts; then the
    responses in the first (all of them: Gemini takes a turn's responses in one Content) and the
    other parts, in their order, in a second."""
    responses = [part for part in parts if "functionResponse" in part]
    others = [part for part in parts if "functionResponse" not in part]
    if not responses or not others:
        return [{"role": role, "parts": parts}]
    return [{"role": role, "parts": responses}, {"role": role, "parts": others}]


def calls_in(parts: list[Any]) -> list[ToolCall]:
    """The function calls among an answer's parts, in OpenAI's terms (arguments as JSON text)."""
    calls: list[ToolCall] = []
    for part in parts:
        function_call = part.get("functionCall")
        if function_call is None:
            continue
        name, args = function_call["name"], function_call.get("args") or {}
        if not isinstance(name, str) or not isinstance(args, dict):
            raise TypeError("a functionCall without a name or with arguments that are not an object")
        gemini_id, signature = function_call.get("id"), part.get("thoughtSignature")
        calls.append(ToolCall(call_id(gemini_id if isinstance(gemini_id, str) else None,
                                      signature if isinstance(signature, str) else None),
                              name, json.dumps(args, ensure_ascii=False)))
    return calls


def call_id(gemini_id: str | None, signature: str | None) -> str:
    """An OpenAI call id for a Gemini call, carrying Gemini's id and the signature when there are any."""
    if gemini_id is not None and not 0 < len(gemini_id.encode()) <= 255:
        gemini_id = None
    raw_signature = _signature_bytes(signature) if signature else None
    for carried_signature in (raw_signature, None):  # without the signature if the id would be too long
        if gemini_id or carried_signature:
            carrier = _carrier(gemini_id, carried_signature)
            if len(carrier) <= MAX_CALL_ID:
                return carrier
    return "call_" + secrets.token_hex(12)


def _carrier(gemini_id: str | None, raw_signature: bytes | None) -> str:
    """version, a nonce (two steps' calls never share an id), Gemini's id (length first), the signature."""
    id_bytes = (gemini_id or "").encode()
    payload = bytes([_VERSION]) + secrets.token_bytes(_NONCE_BYTES) + bytes([len(id_bytes)]) + id_bytes \
        + (raw_signature or b"")
    return _CARRIER + base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _signature_bytes(signature: str) -> bytes | None:
    """The signature's bytes when re-encoding them gives it back exactly (Google sends base64)."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode() == signature else None


def carried_by(call_id: str) -> Carried:
    """What one of our call ids carries; nothing for any other id (another vendor's, or mangled)."""
    if not call_id.startswith(_CARRIER):
        return Carried(None, None)
    encoded = call_id.removeprefix(_CARRIER)
    try:
        payload = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
        id_end = 1 + _NONCE_BYTES + 1 + payload[1 + _NONCE_BYTES]
        if payload[0] != _VERSION or len(payload) < id_end:
            return Carried(None, None)
        gemini_id = payload[1 + _NONCE_BYTES + 1:id_end].decode()
    except (binascii.Error, ValueError, IndexError):
        return Carried(None, None)
    signature = payload[id_end:]
    return Carried(gemini_id or None, base64.b64encode(signature).decode() if signature else None)


def call_arguments(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the object Gemini takes; InvalidRequest when they are not one."""
    arguments = _json_object(call.arguments)
    if arguments is None:
        raise InvalidRequest(f"The arguments of a call of {call.name!r} are not JSON text of an object: Gemini "
                             "models take a function call's arguments only as an object.", param="messages")
    return arguments


def refuse_unsendable_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> None:
    """A 400 for tools or tool calls Gemini refuses outright that the request's validation let through."""
    for tool in tools or ():
        _refuse_name(tool["function"]["name"], "tools")
        try:
            orjson.dumps(tool["function"].get("parameters"))
        except TypeError as exc:  # orjson's refusal: an integer beyond 64 bits, or nesting too deep
            raise InvalidRequest(f"The parameters of tool {tool['function']['name']!r} cannot be sent to Gemini "
                                 "models: they hold an integer beyond 64 bits or are nested too deeply.",
                                 param="tools") from exc
    for message in messages:
        for call in tool_calls_of(message):
            _refuse_name(call.name, "messages")
            call_arguments(call)


def _refuse_name(name: str, param: str) -> None:
    if not FUNCTION_NAME.fullmatch(name):
        raise InvalidRequest(f"Function name {name!r} is not one Gemini models take: it must start with a letter "
                             "or an underscore, then letters, digits, underscores, dots, colons or dashes, "
                             "64 characters at most.", param=param)


def _json_object(text: str) -> dict[str, Any] | None:
    """The object `text` is JSON text of, or None (not JSON, not an object, NaN or a number too big
    to send on)."""
    try:
        value = json.loads(text, parse_constant=_no_constant)
        orjson.dumps(value)
    except (ValueError, TypeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _no_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")
