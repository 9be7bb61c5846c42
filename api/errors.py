"""One place that renders every error as the OpenAI envelope (SPEC §2)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

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
    if not exc.retryable:
        headers["x-should-retry"] = "false"
    return json_response(exc.envelope(), status=exc.status, headers=headers)


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    """FastAPI's validation error as one 400 naming the first bad field."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.", code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = first.get("msg", "Invalid request")
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'." if param else "Missing request body."
        return InvalidRequest(message, param=param, code="missing_required_parameter")
    return InvalidRequest(f"Invalid value for '{param}': {message}." if param else message, param=param,
                          code="invalid_value")


def http_error(exc: StarletteHTTPException) -> HelyxError:
    if exc.status_code == 404:
        return NotFound("Unknown route.", code="unknown_route")
    if exc.status_code == 405:
        return MethodNotAllowed("Method not allowed on this route.")
    if exc.status_code == 413:
        return PayloadTooLarge("The request body is too large.")
    if exc.status_code == 400:
        return InvalidRequest(str(exc.detail))
    if exc.status_code == 503:
        return ServiceUnavailable(str(exc.detail))
    err = ServerError(str(exc.detail))
    err.status = exc.status_code
    return err


def install(app: FastAPI) -> None:
    @app.exception_handler(HelyxError)
    async def _helyx(_: Request, exc: HelyxError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        error = http_error(exc)
        if exc.status_code == 405:
            error.headers["allow"] = ", ".join(sorted(_allowed_methods(request)))
        return error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Starlette runs this handler in ServerErrorMiddleware, outside every user middleware,
        # so the request id middleware never sees this response: add the header here.
        request_id = getattr(request.state, "request_id", None)
        headers = {"x-request-id": request_id} if request_id else None
        if _is_database_down(exc):
            log.error("database unavailable on %s: %s", request.url.path, exc)
            return error_response(ServiceUnavailable("The service is temporarily unavailable, try again.",
                                                     headers=headers))
        log.exception("unhandled error on %s", request.url.path)
        return error_response(ServerError("Internal server error.", headers=headers))


def _allowed_methods(request: Request) -> set[str]:
    """Every method any route serves at this path (Starlette's own Allow names one route's only)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return methods


def _is_database_down(exc: Exception) -> bool:
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from common import pg_async
    from common.pg_statements import UNREACHABLE

    if isinstance(exc, (PoolTimeout, pg_async.PoolTimeout, *UNREACHABLE)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated or "connect" in str(exc).lower())
