"""One place that renders every error as the OpenAI envelope (SPEC §2)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from api.responses import json_response
from common.errors import (
    HelyxError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
)

log = logging.getLogger("helyx.api")


def error_response(exc: HelyxError) -> Response:
    headers = dict(exc.headers)
    if not exc.client_may_retry:
        headers["x-should-retry"] = "false"
    return json_response(exc.envelope(), status=exc.status, headers=headers)


_SOURCES = ("body", "query", "path", "header", "cookie")
# JSON types as a user names them, for pydantic's type errors and for what the user sent instead.
_EXPECTED = {"string_type": "a string", "list_type": "an array", "int_type": "an integer", "float_type": "a number",
             "bool_type": "a boolean", "dict_type": "an object", "model_type": "an object",
             "model_attributes_type": "an object", "none_required": "null"}
_TAG_NAMES = ("str", "int", "float", "bool", "none")  # pydantic's names for plain union members
_OBJECT_ERRORS = ("dict_type", "model_type", "model_attributes_type")
NOT_JSON = "The request body must be JSON (Content-Type: application/json)."
_UNPARSED = "There was an error parsing the body"  # FastAPI's words for a body json.loads raised on


_ERRORS_READ = 64  # the answer names one field; a schema that collects thousands of errors must not cost more


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    """FastAPI's validation error as one 400 naming the user's field (SPEC §2): the first bad
    field, its path as the user wrote it (`messages.0.content`, never pydantic's union-member
    tags such as `user` or `constrained-str`), and, where a union was tried, the error of the
    member that matched the input best."""
    errors = list(exc.errors())[:_ERRORS_READ]
    if not errors:
        return InvalidRequest("Invalid request.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.", code="invalid_json")
    body = getattr(exc, "body", None)
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in _OBJECT_ERRORS:
        if isinstance(body, bytes):  # FastAPI read it as JSON only for a JSON Content-Type
            return InvalidRequest(NOT_JSON, code="unsupported_content_type")
        return InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    return _describe(_most_relevant(errors, body))


def _user_path(error: Any, body: Any) -> tuple[list[str | int], int | None]:
    """The error's field path as the user wrote it, and the index in its `loc` of the innermost
    name pydantic added (a union member such as `constrained-str`, or a discriminator's tag such
    as `user`). Walking the body tells them apart from field names; for a body FastAPI did not
    parse (the videos route validates its form itself), names that look like pydantic's are dropped."""
    loc = list(error.get("loc", ()))
    start = 1 if loc and loc[0] in _SOURCES else 0
    in_body = not start or loc[0] == "body"  # query, path and header names are never union tags
    walk = in_body and isinstance(body, dict | list)
    node, path, tag, tagged = body, [], None, None
    for i, part in enumerate(loc[start:], start):
        if not walk:
            if in_body and isinstance(part, str) and ("[" in part or "-" in part or part in _TAG_NAMES):
                tag = i
            else:
                path.append(part)
        elif _is_tag(node, part) and i < len(loc) - 1 and tagged is not node:  # a key named as the tag, too
            tag, tagged = i, node
        elif _has(node, part):
            path.append(part)
            node = node[part]
        elif i == len(loc) - 1 and error.get("type") == "missing":
            path.append(part)  # the missing field itself: absent from the body by definition
        else:
            tag = i
    return path, tag


def _is_tag(node: Any, part: object) -> bool:
    """Whether `part` is the discriminator's value of this object (pydantic puts the union
    member's tag, the object's own `role` or `type`, into the path)."""
    return isinstance(node, dict) and isinstance(part, str) and part in (node.get("role"), node.get("type"))


def _has(node: Any, part: object) -> bool:
    """Whether `part` is a key (or an index) of this piece of the body."""
    if isinstance(node, dict):
        return isinstance(part, str) and part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _most_relevant(errors: list[Any], body: Any) -> list[tuple[Any, list[str | int]]]:
    """The first error, or, when it came from a union member, the best of that union's errors:
    the one that got deepest into the input (its member matched the input's shape), a broken
    constraint before a wrong type; several wrong types at one place come back together."""
    first_path, tag = _user_path(errors[0], body)
    if tag is None:
        return [(errors[0], first_path)]
    prefix = list(errors[0]["loc"][:tag])
    members = [(e, _user_path(e, body)[0]) for e in errors if list(e.get("loc", ()))[:tag] == prefix]
    best, best_path = max(members, key=lambda m: (len(m[1]), m[0].get("type") not in _EXPECTED))
    if best.get("type") not in _EXPECTED:
        return [(best, best_path)]
    return [(e, p) for e, p in members if p == best_path and e.get("type") in _EXPECTED]


def _describe(chosen: list[tuple[Any, list[str | int]]]) -> InvalidRequest:
    """The 400 for the chosen error, in the OpenAI SDK's words: a missing parameter, a wrong JSON
    type (what was expected and what came), or a wrong value (pydantic's message, unprefixed)."""
    error, path = chosen[0]
    kind, ctx = error.get("type"), error.get("ctx") or {}
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        path = [*path, str(ctx.get("discriminator", "type")).strip("'")]
    param = ".".join(str(p) for p in path) or None
    if kind in ("missing", "union_tag_not_found"):
        message = f"Missing required parameter: '{param}'." if param else "Missing request body."
        return InvalidRequest(message, param=param, code="missing_required_parameter")
    if kind in _EXPECTED:
        expected = _either([_EXPECTED[e.get("type")] for e, _ in chosen])
        message = f"expected {expected}, but got {_json_type(error.get('input'))} instead"
        return InvalidRequest(_sentence(f"Invalid type for '{param}': {message}" if param else message),
                              param=param, code="invalid_type")
    if kind == "union_tag_invalid":
        message = f"unknown {path[-1]} '{ctx.get('tag')}' (expected one of {ctx.get('expected_tags')})"
    else:
        message = str(error.get("msg", "Invalid request")).removeprefix("Value error, ")
    return InvalidRequest(_sentence(f"Invalid value for '{param}': {message}" if param else message), param=param,
                          code="invalid_value")


def _json_type(value: object) -> str:
    """What the user sent, named as a JSON type."""
    if value is None:
        return "null"
    for python_type, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                              (list, "an array"), (dict, "an object")):
        if isinstance(value, python_type):
            return name
    if isinstance(value, UploadFile):  # a form field sent as a file part
        return "an uploaded file"
    return type(value).__name__


def _either(names: list[str]) -> str:
    unique = list(dict.fromkeys(names))
    return unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " or " + unique[-1]


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


_SERVED = ("/api/v1/chat/completions, /models, /images/generations, /videos, /jobs, /files/{id}/content, "
           "/generations/{id}, /credits, /usage, /keys and /webhooks/secret")
_ADMIN_SERVED = ("The admin API serves /admin/accounts, /admin/accounts/{id}/plan, /admin/accounts/{id}/credits, "
                 "/admin/accounts/{id}/keys and /admin/keys/{id}, when HELYX_ADMIN_TOKEN is set")
_SHOWN_PATH_CHARS = 200


def unknown_route(request: Request) -> NotFound:
    """A 404 that names what was asked for: a bare "Unknown route." read, in the SDK's
    NotFoundError, like an unknown model."""
    path = request.url.path
    shown = path if len(path) <= _SHOWN_PATH_CHARS else path[:_SHOWN_PATH_CHARS] + "..."
    # The same words whether the admin API is on or off: its 404s never tell which (api.deps.require_admin).
    served = (_ADMIN_SERVED if path == "/admin" or path.startswith("/admin/")
              else f"It serves {_SERVED} (the OpenAPI description is at /openapi.json)")
    return NotFound(f"Unknown route: this gateway does not serve {request.method} {shown}. {served}.",
                    code="unknown_route")


def http_error(exc: StarletteHTTPException) -> HelyxError:
    """Starlette's own refusals other than a 404 (`unknown_route`, which needs the request)."""
    if exc.status_code == 405:
        return MethodNotAllowed("Method not allowed on this route.")
    if exc.status_code == 413:
        return PayloadTooLarge("The request body is too large.")
    if exc.status_code == 400 and exc.detail == _UNPARSED:  # invalid UTF-8, a 5,000-digit number, deep nesting
        return InvalidRequest("The request body is not valid JSON (invalid UTF-8, a number too long, or nesting "
                              "too deep).", code="invalid_json")
    if exc.status_code == 400:
        return InvalidRequest(str(exc.detail))
    if exc.status_code == 503:
        return ServiceUnavailable(str(exc.detail))
    err = ServerError(str(exc.detail))
    err.status = exc.status_code
    return err


async def _key_refusal(request: Request) -> HelyxError | None:
    """On a route that looks the key up itself (api.deps.key_checked_in_route), a body that fails
    validation has not met the key lookup yet: a bad key is refused first, as on every route. A
    lookup that fails otherwise (the database away) leaves the body's own error to answer."""
    if not getattr(request.state, "key_unchecked", False):
        return None
    from api.deps import authenticate  # here: api.deps is a route-side module

    try:
        await authenticate(request, request.app.state.services)
    except HelyxError as exc:
        return exc
    except Exception:
        log.warning("the key of a request with an invalid body could not be checked", exc_info=True)
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(HelyxError)
    async def _helyx(_: Request, exc: HelyxError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        refusal = await _key_refusal(request)
        return error_response(refusal or validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        error = unknown_route(request) if exc.status_code == 404 else http_error(exc)
        if exc.status_code == 405:
            error.headers["allow"] = ", ".join(sorted(_allowed_methods(request)))
        return error_response(error)

    async def _database_down(request: Request, exc: Exception) -> Response:
        """Handled here, inside the middleware, like any refusal: the request is logged and counted
        as the 503 it is. Left to the catch-all below, it was answered 503 but logged, counted and
        traced as a 500 (Starlette re-raises there after answering), once per request of an outage."""
        if not is_database_down(exc):
            raise exc  # a real failure: the catch-all's 500, with its traceback
        log.warning("database unavailable on %s: %s", request.url.path, type(exc).__name__)
        return error_response(ServiceUnavailable("The service is temporarily unavailable, try again."))

    for exc_type in _database_exceptions():
        app.add_exception_handler(exc_type, _database_down)

    async def _unstorable_text(request: Request, exc: Exception) -> Response:
        """The last line behind the input checks (api.middleware, api.schemas.base.StoredText):
        text PostgreSQL cannot store is the caller's input, refused before anything was written
        (the statement failed whole), so a 400 rather than a 500 the SDK would retry."""
        if not _is_nul_text(exc):
            raise exc
        log.warning("text with a NUL character refused by the database on %s", request.url.path)
        return error_response(InvalidRequest("Text with a NUL character (\\u0000) cannot be stored; remove it.",
                                             code="invalid_characters"))

    for exc_type in _data_exceptions():
        app.add_exception_handler(exc_type, _unstorable_text)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Starlette runs this handler in ServerErrorMiddleware, outside every user middleware,
        # so the request id middleware never sees this response: add the header here. (That
        # middleware answers the exceptions that reach it itself: see unexpected_error_response.)
        request_id = getattr(request.state, "request_id", None)
        return unexpected_error_response(exc, request.url.path, {"x-request-id": request_id} if request_id else None)


def unexpected_error_response(exc: Exception, path: str, headers: dict[str, str] | None = None) -> Response:
    """The answer to an exception no handler took: a 503 when the database is down, else a 500
    (logged with its traceback)."""
    if is_database_down(exc):
        log.error("database unavailable on %s: %s", path, exc)
        return error_response(ServiceUnavailable("The service is temporarily unavailable, try again.",
                                                 headers=headers))
    log.error("unhandled error on %s", path, exc_info=exc)
    return error_response(ServerError("Internal server error.", headers=headers))


def _allowed_methods(request: Request) -> set[str]:
    """Every method any route serves at this path (Starlette's own Allow names one route's only)."""
    methods: set[str] = set()
    for route in _every_route(request.app.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return methods


def _every_route(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The app's routes, and those of any router included whole (FastAPI 0.16x keeps one so, as
    one route of the app; api.app adds its routers' routes to the app itself instead)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _every_route(inner.routes)
        else:
            yield route


def _database_exceptions() -> tuple[type[Exception], ...]:
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from common import pg_async
    from common.pg_statements import UNREACHABLE

    return (DBAPIError, PoolTimeout, pg_async.PoolTimeout, *UNREACHABLE)


def _data_exceptions() -> tuple[type[Exception], ...]:
    import psycopg
    from sqlalchemy.exc import DataError

    return (DataError, psycopg.DataError)


def _is_nul_text(exc: Exception) -> bool:
    """psycopg's own refusal of a NUL in a parameter, or the server's of `\\u0000` in JSON."""
    text = str(exc)
    return "NUL (0x00)" in text or "\\u0000" in text


def is_database_down(exc: Exception) -> bool:
    """A pool timeout or a lost/refused connection; any other database error is a real failure."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated or "connect" in str(exc).lower())
    return isinstance(exc, _database_exceptions())
