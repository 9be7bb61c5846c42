"""A fake Anthropic Messages upstream: POST /v1/messages, plain and SSE (named events).

A stream sends message_start, content_block_start, ping, content_block_delta × N,
content_block_stop, message_delta and message_stop, as Anthropic does; `error_after_chunks`
sends an `event: error` (overloaded_error) mid-stream, `drop_after_chunks` aborts the connection.
"""

from __future__ import annotations

import asyncio
import json
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
        if body.get("stream"):
            return TrackedStream(fake, _stream(fake.behaviour, body["model"]))
        return JSONResponse(_message(fake.behaviour, body["model"], [_text(fake.behaviour.answer)]))

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def _message(b: Behaviour, model: str, content: list[dict[str, Any]], *, final: bool = True,
             output_tokens: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": (b.finish or "end_turn") if final else None, "stop_sequence": None,
    }
    if not b.omit_usage:
        data["usage"] = {"input_tokens": b.prompt_tokens,
                         "output_tokens": b.completion_tokens if output_tokens is None else output_tokens}
        if b.cached_tokens:
            data["usage"]["cache_read_input_tokens"] = b.cached_tokens
    return data


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


async def _stream(b: Behaviour, model: str) -> AsyncGenerator[bytes, None]:
    yield _event("message_start", {"message": _message(b, model, [], final=False, output_tokens=1)})
    yield _event("content_block_start", {"index": 0, "content_block": _text("")})
    yield _event("ping", {})
    for sent, piece in enumerate(b.pieces()):
        if sent == b.error_after_chunks:
            error = {"type": "overloaded_error", "message": b.error_message}
            yield _event("error", {"error": error})
            return
        if sent == b.drop_after_chunks:
            await drop_connection()
        if b.chunk_delay:
            await asyncio.sleep(b.chunk_delay)
        yield _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
    yield _event("content_block_stop", {"index": 0})
    delta: dict[str, Any] = {"delta": {"stop_reason": b.finish or "end_turn", "stop_sequence": None}}
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
