"""A fake Gemini API upstream: POST /v1beta/models/{model}:generateContent and
:streamGenerateContent?alt=sse (data-only events separated by CRLF CRLF, as Google sends; no
end marker: the last chunk carries finishReason and the full usageMetadata).

`drop_after_chunks` aborts the connection mid-stream; `error_after_chunks` sends an error object
as a data event. With `error_reason="API_KEY_INVALID"` and fail_status 400 it answers a bad key
the way Google does (400 INVALID_ARGUMENT, not 401).

`tool_calls` are answered as Gemini 3 answers them: `functionCall` parts after the text, the first
carrying a `thoughtSignature` (SIGNATURE_PREFIX and the function's name, base64), finishReason
STOP; streamed, each call whole in a chunk of its own. Like Gemini 3, the fake answers 400 to a
request whose model turn has function calls without a signature on the first of them.

It answers 400 too to a turn of function calls not followed by their responses as Gemini takes
them: a user Content of functionResponse parts only, one per call (Gemini's words for these two),
each named after a call of that turn (FunctionResponse.name "matches FunctionCall.name", Google's
reference says) and, when it has an id, after the call of that id. Newer models refuse a
functionResponse Content with other parts (text, images) beside the responses with a misleading
"Requests ending with a model turn are not supported."; older ones took it: the fake is strict.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.upstream import Behaviour, FakeUpstream, TrackedStream, drop_connection, running

_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
             404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


SIGNATURE_PREFIX = b"fake-thought:"


def signature_for(name: str) -> str:
    """The thought signature the fake gives a call of `name` (base64, as Google sends bytes)."""
    return base64.b64encode(SIGNATURE_PREFIX + name.encode()).decode()


def build_app(fake: FakeUpstream) -> Starlette:
    async def models(request: Request) -> Response:
        model, _, method = request.path_params["target"].partition(":")
        body, failure = await fake.receive_request(request)
        if failure is not None:
            return JSONResponse(_error(fake.behaviour, failure), failure, headers=fake.error_headers())
        if (unsigned := _unsigned_call(body)) is not None:
            return JSONResponse(_invalid(f"Function call is missing a thought_signature in functionCall parts "
                                         f"(function call `{unsigned}`)."), 400)
        if (problem := _response_turn_problem(body)) is not None:
            return JSONResponse(_invalid(problem), 400)
        if method == "streamGenerateContent" and request.query_params.get("alt") == "sse":
            return TrackedStream(fake, _stream(fake.behaviour, model))
        if method == "generateContent":
            b = fake.behaviour
            text = [{"text": b.answer}] if b.answer or not b.tool_calls else []
            return JSONResponse(_response(b, model, text + _call_parts(b), final=True))
        return JSONResponse(_error(fake.behaviour, 404), 404)

    return Starlette(routes=[Route("/v1beta/models/{target:path}", models, methods=["POST"])])


def _error(b: Behaviour, status: int) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": b.error_message,
                             "status": _STATUSES.get(status, "INTERNAL")}
    if b.error_reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": b.error_reason, "domain": "googleapis.com"}]
    return {"error": error}


def _invalid(message: str) -> dict[str, Any]:
    return {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}


def _unsigned_call(body: Any) -> str | None:
    """The name of a function call that Gemini 3 would refuse for want of a thought signature: the
    first call of a model turn, sent back without one."""
    for content in (body or {}).get("contents") or ():
        calls = [part for part in content.get("parts") or () if "functionCall" in part]
        if content.get("role") == "model" and calls and not calls[0].get("thoughtSignature"):
            return str(calls[0]["functionCall"].get("name"))
    return None


def _response_turn_problem(body: Any) -> str | None:
    """Why Gemini refuses the conversation's function responses, or None: see the module's docstring."""
    contents = (body or {}).get("contents") or []
    for before, content in pairwise([{}, *contents]):
        calls = [part["functionCall"] for part in before.get("parts") or () if "functionCall" in part]
        parts = content.get("parts") or []
        responses = [part["functionResponse"] for part in parts if "functionResponse" in part]
        if responses and (before.get("role") != "model" or not calls):
            return "Please ensure that function response turn comes immediately after a function call turn."
        if calls and len(responses) != len(calls):
            return ("Please ensure that the number of function response parts is equal to the number of function "
                    "call parts of the function call turn.")
        if responses and len(responses) != len(parts):
            return "Requests ending with a model turn are not supported."
        if (mismatch := _unmatched_response(calls, responses)) is not None:
            return mismatch
    return None


def _unmatched_response(calls: list[dict[str, Any]], responses: list[dict[str, Any]]) -> str | None:
    """Responses not named after the calls of their turn (and, when they have an id, after the call
    of that id), or None."""
    call_names = sorted(str(call.get("name")) for call in calls)
    response_names = sorted(str(response.get("name")) for response in responses)
    if response_names != call_names:
        return f"The functionResponse names {response_names} are not those of the function call turn {call_names}."
    named = {call["id"]: call.get("name") for call in calls if call.get("id")}
    for response in responses:
        if response.get("id") and named.get(response["id"]) != response.get("name"):
            return (f"The functionResponse of id {response['id']!r} is named {response.get('name')!r}, not after "
                    "the function call of that id.")
    return None


def _call_parts(b: Behaviour) -> list[dict[str, Any]]:
    """The `tool_calls` knob's calls as Gemini's functionCall parts; the first one signed."""
    parts: list[dict[str, Any]] = [{"functionCall": {"name": name, "args": args}} for name, args in b.tool_calls or ()]
    if parts:
        parts[0]["thoughtSignature"] = signature_for(parts[0]["functionCall"]["name"])
    return parts


def _response(b: Behaviour, model: str, parts: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
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
    """Each text piece in a chunk, then each function call whole in one of its own."""
    texts = [[{"text": piece}] for piece in b.pieces()]
    chunks = texts + [[call] for call in _call_parts(b)] or [[{"text": ""}]]
    for sent, parts in enumerate(chunks):
        if sent == b.error_after_chunks:
            yield _event(_error(b, 500))
            return
        if sent == b.drop_after_chunks:
            await drop_connection()
        if b.chunk_delay:
            await asyncio.sleep(b.chunk_delay)
        yield _event(_response(b, model, parts, final=sent == len(chunks) - 1))


@contextmanager
def run(behaviour: Behaviour | None = None) -> Iterator[FakeUpstream]:
    """Serve the fake on a free port; `fake.base_url` ends in /v1beta, as Google's does."""
    with running(build_app, "/v1beta", behaviour) as fake:
        yield fake
