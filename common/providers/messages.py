"""Reading OpenAI chat messages: the helpers every adapter (and the token estimator) shares.

A message's `content` is a string, None, or a list of parts ({"type": "text", "text": ...},
{"type": "image_url", "image_url": {"url": ...}}, ...). These helpers normalise that once so the
adapters only translate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from common.errors import InvalidRequest
from common.providers.base import ToolCall
from common.providers.image_types import media_type, refusal

T = TypeVar("T")

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),(?P<data>.*)$", re.DOTALL)
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")  # the URL-safe alphabet too: vendors decode either


def content_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message's content as a list of part dicts (a plain string becomes one text part)."""
    content = message.get("content")
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
        elif isinstance(part, dict):
            parts.append(part)
    return parts


def part_text(part: dict[str, Any]) -> str | None:
    """The text of a text part, or None for any other kind of part."""
    if part.get("type", "text") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    return None


def part_image_url(part: dict[str, Any]) -> str | None:
    """The URL of an image_url part (object or bare-string form), or None."""
    if part.get("type") != "image_url":
        return None
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    return url if isinstance(url, str) else None


def message_texts(message: dict[str, Any]) -> list[str]:
    return [text for part in content_parts(message) if (text := part_text(part)) is not None]


def message_text(message: dict[str, Any], separator: str = "") -> str:
    return separator.join(message_texts(message))


def role_of(message: dict[str, Any]) -> str:
    """system | user | assistant; OpenAI's newer `developer` role counts as system, and a `tool`
    message (a function's result) as user: Anthropic and Gemini take results in a user turn."""
    role = message.get("role")
    if role in ("system", "developer"):
        return "system"
    return "assistant" if role == "assistant" else "user"


def tool_calls_of(message: dict[str, Any]) -> list[ToolCall]:
    """An assistant message's tool calls (api.schemas.chat validated their shape); [] for none."""
    return [ToolCall(call["id"], call["function"]["name"], call["function"]["arguments"])
            for call in message.get("tool_calls") or ()]


def answered_calls(messages: Iterable[dict[str, Any]]) -> list[ToolCall | None]:
    """Per message, the tool call it answers: for a tool message the call of its tool_call_id in the
    nearest assistant message before it, else (and for a call not there) None. A call id is one only
    within its turn: vendors that number calls per turn (Kimi's "functions.get_weather:0") use it
    again in a later turn, for another call."""
    answered: list[ToolCall | None] = []
    calls: dict[str, ToolCall] = {}  # the nearest assistant message's, by id
    for message in messages:
        if message.get("role") == "tool":
            answered.append(calls.get(message.get("tool_call_id", "")))
            continue
        if role_of(message) == "assistant":
            calls = {call.id: call for call in tool_calls_of(message)}
        answered.append(None)
    return answered


def tools_json_text(tools: list[dict[str, Any]] | None, tool_choice: object = None) -> str:
    """The tool definitions (and a named tool_choice) as JSON text: what a token estimate counts."""
    if not tools:
        return ""
    return json.dumps(tools, ensure_ascii=False) + (json.dumps(tool_choice) if isinstance(tool_choice, dict) else "")


def tool_calls_text(calls: Iterable[ToolCall]) -> str:
    """The text a model produced for its tool calls (names and arguments): what a completion
    estimate counts when the vendor reported no usage."""
    return "".join(call.name + call.arguments for call in calls)


def tool_turn_text(message: dict[str, Any]) -> str:
    """What a message says of tool calls besides its content: its calls (names, arguments, ids),
    or the id of the call it answers. Counted as text by the token estimates."""
    calls, answered = tool_calls_of(message), message.get("tool_call_id")
    return tool_calls_text(calls) + "".join(call.id for call in calls) + (answered if isinstance(answered, str) else "")


def parse_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) for a base64 `data:` URL; None for any other URL.

    Raises InvalidRequest for a data URL that is not base64 (vendors accept only base64 bytes).
    """
    if not url.startswith("data:"):
        return None
    problem = data_url_problem(url)
    if problem is not None:
        raise InvalidRequest(problem, param="messages")
    match = _DATA_URL.match(url)
    assert match is not None
    return media_type(match.group("mime"), match.group("data")), match.group("data")


def image_parts(messages: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(`messages.N.content.M`, URL) of every image part, in order: what a refusal of one names."""
    for index, message in enumerate(messages):
        for number, part in enumerate(content_parts(message)):
            url = part_image_url(part)
            if url is not None:
                yield f"messages.{index}.content.{number}", url


def inline_image_refusal(url: str, accepted: frozenset[str]) -> str | None:
    """Why a vendor that takes `accepted` would refuse this inline image (image_types.refusal), from
    its label and first bytes only (not the whole data again); None for an image by URL, or a data
    URL the request's validation refuses (api.schemas.chat)."""
    match = _DATA_URL.match(url) if url.startswith("data:") else None
    if match is None:
        return None
    start = match.start("data")
    return refusal(match.group("mime"), url[start:start + 16], accepted)


def refuse_image_types(messages: list[dict[str, Any]], accepted: frozenset[str], vendor: str) -> None:
    """A 400 naming the first inline image the vendor would refuse (its refusal came after the
    hold, as a 502). An image by URL is the vendor's to fetch and judge."""
    for param, url in image_parts(messages):
        why = inline_image_refusal(url, accepted)
        if why is not None:
            raise InvalidRequest(f"{vendor} takes images as {', '.join(sorted(accepted))}, {why}; "
                                 "convert it, or choose another model.", param=param, code="unsupported_image_type")


def data_url_problem(url: str) -> str | None:
    """Why a `data:` URL cannot go to a vendor (they take base64 bytes only), or None when it can.
    The request schema asks this before anything is held (api.schemas.chat.ImageURL)."""
    match = _DATA_URL.match(url)
    if match is None or ";base64" not in (match.group("params") or ""):
        return "Image data URLs must be base64 encoded (data:image/png;base64,...)."
    if not _BASE64.fullmatch(match.group("data")):
        return "The image data URL's data is not base64 (A-Z, a-z, 0-9, +, /, then = padding)."
    return None


def has_content(messages: Iterable[dict[str, Any]]) -> bool:
    """Whether any message carries text (not only blanks), an image, a tool call or a tool's result."""
    return any(message.get("tool_calls") or message.get("role") == "tool" or any(
        ((text := part_text(part)) is not None and text.strip()) or part_image_url(part) is not None
        for part in content_parts(message)) for message in messages)


def refuse_empty_conversation(messages: list[dict[str, Any]], vendor: str) -> None:
    """A 400 before anything is held for a conversation Anthropic and Gemini refuse outright
    (OpenAI answers it): every message empty or blank, so there is no turn to send."""
    if not has_content(messages):
        raise InvalidRequest(f"Every message is empty: {vendor} models need text or an image in at least one "
                             "message.", param="messages")


def system_and_turns(messages: list[dict[str, Any]], turn_role: Callable[[dict[str, Any]], str],
                     parts: Callable[[dict[str, Any]], list[T]]) -> tuple[str, list[tuple[str, list[T]]]]:
    """For vendors that take the system prompt apart from the turns (Anthropic, Gemini): the
    system text (the system messages' joined by blank lines) and the merged turns. They need at
    least one turn: a conversation of system messages only, which OpenAI answers, sends its system
    text as the one user turn instead."""
    system = "\n\n".join(message_text(m, "\n") for m in messages if role_of(m) == "system")
    turns = merge_turns((turn_role(m), parts(m)) for m in messages if role_of(m) != "system")
    if not turns and system.strip():
        as_user = {"role": "user", "content": system}
        return "", merge_turns([(turn_role(as_user), parts(as_user))])
    return system, turns


def merge_turns(turns: Iterable[tuple[str, list[T]]]) -> list[tuple[str, list[T]]]:
    """Join consecutive turns of the same role (Anthropic and Gemini require alternation);
    turns with nothing in them are dropped."""
    merged: list[tuple[str, list[T]]] = []
    for role, items in turns:
        if not items:
            continue
        if merged and merged[-1][0] == role:
            merged[-1][1].extend(items)
        else:
            merged.append((role, list(items)))
    return merged


def alternating(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation in OpenAI's form as a vendor that wants one system message first, then
    user and assistant strictly alternating, takes it (Perplexity answers 400 to anything else):
    the system messages joined into the first, consecutive turns of one role joined (texts by a
    blank line; a turn with an image part keeps its parts). Participant names are dropped."""
    system, turns = system_and_turns(messages, role_of, lambda m: [p for p in content_parts(m) if p])
    joined: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for role, parts in turns:
        texts = [part_text(p) for p in parts]
        content: Any = "\n\n".join(t for t in texts if t is not None) if None not in texts else parts
        joined.append({"role": role, "content": content})
    return joined
