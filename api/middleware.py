"""Pure ASGI middleware (no per-request task overhead): request ids, the body size limit, and the
answer to a request that ended without one."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from typing import Any
from urllib.parse import parse_qsl

import anyio
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response, unexpected_error_response
from common.errors import PayloadTooLarge, ServiceUnavailable

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Every response carries `x-request-id`: the caller's (when sane) or a new one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id
        raw_id = request_id.encode()
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # A backstop for the middleware outside FallbackAnswerMiddleware (which answers the
            # app's own exceptions). Answered here, not re-raised to Starlette's
            # ServerErrorMiddleware: it answers too, then re-raises to the server, which logs a
            # second traceback and resets the keep-alive connection (the client's next request on
            # it failed). Mid-response, only closing the connection can tell the client, so then
            # it goes on up.
            if started:
                raise
            await unexpected_error_response(exc, scope.get("path", ""))(scope, receive, send_with_id)


CUT_ANSWER_SECONDS = 2.0  # the most the answer to a cut request may take (the process is stopping)


class FallbackAnswerMiddleware:
    """The answer to a request whose handler ended before its response began without giving one:
    cut off (cancelled) by uvicorn at the end of its shutdown grace (in place of uvicorn's
    plain-text 500), or an exception no handler took (the 500 envelope). The innermost of our
    middleware, so that the request log and metrics count the status sent, and CORS headers are
    added to it (a 500 without them is a network error to a browser script)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not started:
                await answer_cut_request(scope, receive, tracked)
            raise
        except Exception as exc:
            if started:  # mid-response, only closing the connection can tell the client
                raise
            await unexpected_error_response(exc, scope.get("path", ""))(scope, receive, tracked)


async def answer_cut_request(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request the server cut off, at the end of its shutdown grace, before its response
    began (a chat still waiting for its provider, an image request waiting for its job), in the
    error shape rather than uvicorn's plain-text 500: the route's own answer for that case when it
    left one (`scope["state"]["answer_if_cut"]`: the image route's 202 with its job), else a 503
    `server_shutdown` (which the SDK retries). Best effort: the client may be gone."""
    answer_if_cut = scope.get("state", {}).get("answer_if_cut")
    response = None
    if answer_if_cut is not None:
        with contextlib.suppress(Exception):
            response = answer_if_cut()
    if response is None:
        response = error_response(ServiceUnavailable(
            "The server is shutting down and cut this request off before it was answered. Please retry.",
            code="server_shutdown"))
    with anyio.CancelScope(shield=True), anyio.move_on_after(CUT_ANSWER_SECONDS), contextlib.suppress(Exception):
        await response(scope, receive, send)


class BodyLimitMiddleware:
    """Requests refused before the app reads them: a body over `max_bytes`, declared or streamed
    (413), a NUL character in the path or the query (no id or filter value has one, and
    PostgreSQL cannot take one in text: a 404 or a 400 naming the parameter, not a 500), and a
    compressed body (`Content-Encoding` other than identity: a 400 saying so, rather than one
    about invalid JSON, or a body read as if the header were not there)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if b"%00" in (scope.get("raw_path") or b"") or b"%00" in scope.get("query_string", b""):
            await _send_error(send, *_nul_refusal(scope))
            return
        encoding = _compression(scope)
        if encoding is not None:
            await _send_error(send, 400, {
                "message": f"Request bodies are read as sent: Content-Encoding {encoding[:40]!r} is not "
                           "supported; send the body uncompressed.", "type": "invalid_request_error",
                "code": "unsupported_content_encoding", "param": "Content-Encoding"})
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and (
                len(declared.lstrip("0")) > 18 or int(declared) > self.max_bytes):
            await _send_413(send, self.max_bytes)
            return
        seen = 0
        exceeded = started = replaced = False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise PayloadTooLarge(f"The request body is larger than {self.max_bytes} bytes.")
            return message

        async def guarded_send(message: Message) -> None:
            # Whoever reads the body may wrap our exception in its own error (FastAPI turns any
            # failure while reading a body into "400 There was an error parsing the body"), so once
            # the limit is passed, the response is our 413 whatever the app renders.
            nonlocal started, replaced
            if message["type"] == "http.response.start":
                if exceeded and not started:
                    replaced = True
                    await _send_413(send, self.max_bytes)
                started = True
            if not replaced:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not (exceeded and not started):
                raise
            await _send_413(send, self.max_bytes)


def _nul_refusal(scope: Scope) -> tuple[int, dict[str, Any]]:
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return 400, {"message": f"Invalid value for '{name}': it contains a NUL character (%00).",
                         "type": "invalid_request_error", "code": "invalid_value", "param": name}
    return 404, {"message": "Nothing here: the path contains a NUL character (%00).", "type": "not_found_error",
                 "code": "not_found", "param": None}


async def _send_413(send: Send, limit: int) -> None:
    await _send_error(send, 413, {"message": f"The request body is larger than {limit} bytes.",
                                  "type": "invalid_request_error", "code": "payload_too_large", "param": None})


async def _send_error(send: Send, status: int, error: dict[str, Any]) -> None:
    body = orjson.dumps({"error": error})
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-should-retry", b"false")]})
    await send({"type": "http.response.body", "body": body})


def _compression(scope: Scope) -> str | None:
    """A Content-Encoding other than identity, in any of the request's Content-Encoding headers."""
    for key, value in scope.get("headers", ()):
        if key == b"content-encoding":
            for coding in value.decode("latin-1").split(","):
                if coding.strip().lower() not in ("", "identity"):
                    return coding.strip()
    return None


def _header(scope: Scope, name: bytes) -> Any:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
