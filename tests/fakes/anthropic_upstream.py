"""A fake Anthropic Messages upstream: POST /v1/messages, plain and SSE (named events).

A stream sends message_start, content_block_start, ping, content_block_delta × N,
content_block_stop, message_delta and message_stop, as Anthropic does; `error_after_chunks`
sends an `event: error` (overloaded_error) mid-stream, `drop_after_chunks` aborts the connection.

`tool_calls` adds a tool_use block per call after the text (no text block when the answer is
""), stop_reason "tool_use". Streamed, each block starts with `input: {}` and its input's JSON
text follows in input_json_delta fragments (the first one empty, as Anthropic sends it); the
text pieces and the JSON fragments are the chunks `error_after_chunks` and `drop_after_chunks`
count. The request received is in `fake.last_request.json`.

Like Anthropic, the fake answers 400 (invalid_request_error, Anthropic's words) to a request whose
tool_use ids repeat in the conversation or break Anthropic's pattern, or whose tool_result block
names no tool_use of the assistant message right before it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.upstream import Behaviour, FakeUpstream, TrackedStream, drop_connection, running

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                529: "overloaded_error"}


def build_app(fake: FakeUpstream) -> Starlette:
    async def messages(request: Request) -> Response:
        body, failure = await fake.receive_request(request)
        if failure is not None:
            error = {"type": _ERROR_TYPES.get(failure, "api_error"), "message": fake.behaviour.error_message}
            return JSONResponse({"type": "error", "error": error}, failure,
                                headers={**fake.error_headers(), "request-id": "req_fake"})
        if (problem := _tool_block_problem(body)) is not None:
            return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message": problem}}, 400)
        if body.get("stream"):
            return TrackedStream(fake, _stream(fake.behaviour, body["model"]))
        return JSONResponse(_message(fake.behaviour, body["model"], _content(fake.behaviour)))

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")


def _tool_block_problem(body: Any) -> str | None:
    """Anthropic's refusal of the conversation's tool blocks, or None: a tool_use id that is not of
    its alphabet or is used twice in the conversation, a tool_result that answers no tool_use of the
    message before it."""
    used: set[str] = set()
    previous: set[str] = set()  # the tool_use ids of the message before
    for index, message in enumerate((body or {}).get("messages") or ()):
        content = message.get("content")
        blocks = [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []
        own: set[str] = set()
        for position, block in enumerate(blocks):
            where = f"messages.{index}.content.{position}"
            if block.get("type") == "tool_use":
                if not _TOOL_USE_ID.fullmatch(str(block.get("id"))):
                    return f"{where}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'"
                if block["id"] in used:
                    return f"{where}: `tool_use` ids must be unique"
                used.add(block["id"])
                own.add(block["id"])
            elif block.get("type") == "tool_result" and block.get("tool_use_id") not in previous:
                return (f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {block.get('tool_use_id')}. "
                        "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.")
        previous = own
    return None


_FRAGMENT_CHARS = 7  # a streamed input's JSON text comes in pieces this long, cut anywhere


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def _has_text(b: Behaviour) -> bool:
    return bool(b.answer) or not b.tool_calls


def _tool_use(number: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_fake{number}", "name": name, "input": arguments}


def _content(b: Behaviour) -> list[dict[str, Any]]:
    """A plain answer's content blocks: the text, then a tool_use block per call."""
    text = [_text(b.answer)] if _has_text(b) else []
    return text + [_tool_use(n, name, arguments) for n, (name, arguments) in enumerate(b.tool_calls or ())]


def _stop_reason(b: Behaviour) -> str:
    return b.finish or ("tool_use" if b.tool_calls else "end_turn")


def _message(b: Behaviour, model: str, content: list[dict[str, Any]], *, final: bool = True,
             output_tokens: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": _stop_reason(b) if final else None, "stop_sequence": None,
    }
    if not b.omit_usage:
        data["usage"] = {"input_tokens": b.prompt_tokens,
                         "output_tokens": b.completion_tokens if output_tokens is None else output_tokens}
        if b.cached_tokens:
            data["usage"]["cache_read_input_tokens"] = b.cached_tokens
    return data


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


# A content event: its name, its data, and whether it is a chunk (a piece of text or of JSON).
_ContentEvent = tuple[str, dict[str, Any], bool]


def _content_events(b: Behaviour) -> Iterator[_ContentEvent]:
    """The content blocks as stream events: started, their deltas, stopped."""
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []  # each block as started, and its deltas
    if _has_text(b):
        blocks.append((_text(""), [{"type": "text_delta", "text": piece} for piece in b.pieces()]))
    for number, (name, arguments) in enumerate(b.tool_calls or ()):
        text = json.dumps(arguments, ensure_ascii=False)
        fragments = [""] + [text[i:i + _FRAGMENT_CHARS] for i in range(0, len(text), _FRAGMENT_CHARS)]
        blocks.append((_tool_use(number, name, {}),
                       [{"type": "input_json_delta", "partial_json": fragment} for fragment in fragments]))
    for index, (started, deltas) in enumerate(blocks):
        yield "content_block_start", {"index": index, "content_block": started}, False
        for delta in deltas:
            chunk = delta["type"] == "text_delta" or bool(delta["partial_json"])  # not the empty first fragment
            yield "content_block_delta", {"index": index, "delta": delta}, chunk
        yield "content_block_stop", {"index": index}, False


async def _stream(b: Behaviour, model: str) -> AsyncGenerator[bytes, None]:
    yield _event("message_start", {"message": _message(b, model, [], final=False, output_tokens=1)})
    sent = 0
    for position, (name, data, chunk) in enumerate(_content_events(b)):
        if chunk and sent == b.error_after_chunks:
            error = {"type": "overloaded_error", "message": b.error_message}
            yield _event("error", {"error": error})
            return
        if chunk and sent == b.drop_after_chunks:
            await drop_connection()
        if chunk and b.chunk_delay:
            await asyncio.sleep(b.chunk_delay)
        yield _event(name, data)
        if chunk:
            sent += 1
        if position == 0:
            yield _event("ping", {})
    delta: dict[str, Any] = {"delta": {"stop_reason": _stop_reason(b), "stop_sequence": None}}
    if not b.omit_usage:
        delta["usage"] = {"output_tokens": b.completion_tokens}
        if b.delta_input_tokens:  # cumulative counts; a count left out is unchanged
            delta["usage"]["input_tokens"] = b.prompt_tokens
    yield _event("message_delta", delta)
    yield _event("message_stop", {})


@contextmanager
def run(behaviour: Behaviour | None = None) -> Iterator[FakeUpstream]:
    """Serve the fake on a free port; `fake.base_url` is the host root, as Anthropic's is."""
    with running(build_app, "", behaviour) as fake:
        yield fake
