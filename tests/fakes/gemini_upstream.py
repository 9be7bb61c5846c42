"""A fake Gemini API upstream: POST /v1beta/models/{model}:generateContent and
:streamGenerateContent?alt=sse (data-only events separated by CRLF CRLF, as Google sends; no
end marker: the last chunk carries finishReason and the full usageMetadata).

`drop_after_chunks` aborts the connection mid-stream; `error_after_chunks` sends an error object
as a data event. With `error_reason="API_KEY_INVALID"` and fail_status 400 it answers a bad key
the way Google does (400 INVALID_ARGUMENT, not 401).
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

_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
             404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def build_app(fake: FakeUpstream) -> Starlette:
    async def models(request: Request) -> Response:
        model, _, method = request.path_params["target"].partition(":")
        _, failure = await fake.receive_request(request)
        if failure is not None:
            return JSONResponse(_error(fake.behaviour, failure), failure, headers=fake.error_headers())
        if method == "streamGenerateContent" and request.query_params.get("alt") == "sse":
            return TrackedStream(fake, _stream(fake.behaviour, model))
        if method == "generateContent":
            return JSONResponse(_response(fake.behaviour, model, fake.behaviour.answer, final=True))
        return JSONResponse(_error(fake.behaviour, 404), 404)

    return Starlette(routes=[Route("/v1beta/models/{target:path}", models, methods=["POST"])])


def _error(b: Behaviour, status: int) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": b.error_message,
                             "status": _STATUSES.get(status, "INTERNAL")}
    if b.error_reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": b.error_reason, "domain": "googleapis.com"}]
    return {"error": error}


def _response(b: Behaviour, model: str, text: str, *, final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if final:
        candidate["finishReason"] = b.finish or "STOP"
    data: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": "fake"}
    if not b.omit_usage:
        usage: dict[str, int] = {"promptTokenCount": b.prompt_tokens}
        if final:
            usage["candidatesTokenCount"] = b.completion_tokens
            if b.thoughts_tokens:
                usage["thoughtsTokenCount"] = b.thoughts_tokens
        usage["totalTokenCount"] = sum(usage.values())
        data["usageMetadata"] = usage
    return data


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\r\n\r\n".encode()


async def _stream(b: Behaviour, model: str) -> AsyncGenerator[bytes, None]:
    pieces = b.pieces() or [""]
    for sent, piece in enumerate(pieces):
        if sent == b.error_after_chunks:
            yield _event(_error(b, 500))
            return
        if sent == b.drop_after_chunks:
            await drop_connection()
        if b.chunk_delay:
            await asyncio.sleep(b.chunk_delay)
        yield _event(_response(b, model, piece, final=sent == len(pieces) - 1))


@contextmanager
def run(behaviour: Behaviour | None = None) -> Iterator[FakeUpstream]:
    """Serve the fake on a free port; `fake.base_url` ends in /v1beta, as Google's does."""
    with running(build_app, "/v1beta", behaviour) as fake:
        yield fake
