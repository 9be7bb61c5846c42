"""Routes FastAPI documents from their endpoint's signature but serves through a plain handler.

On every request FastAPI solves an endpoint's dependencies and validates its parameters: for a
job or video poll that was a sixth of the Python calls of the whole request, for a chat about
the same (bench/README.md, twenty-first round). The hot routes take one string from the path, or
one JSON body, and one dependency that reads a header, so a handler of `(request) -> Response`
can do the same directly. The endpoint stays as it is, for the OpenAPI document and for
anything else that calls it.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import routing
from fastapi.dependencies.utils import get_missing_field_error
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Awaitable[Response]]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
NO_BODY = object()  # an empty body: FastAPI's "Field required" for a required body model


class LeanRoute(APIRoute):
    """An APIRoute whose endpoint, marked by `served_by`, is served by the handler it names,
    but for requests FastAPI's OpenTelemetry instrumentation observes (HELYX_OPENTELEMETRY): those
    go through FastAPI's own handler, whose spans, events and telemetry data the lean one lacks."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        full = super().get_route_handler()
        lean: _Lean | None = getattr(self.endpoint, "served_by", None)
        if lean is None:
            return full
        _check_lean(self, lean)
        handler = lean.make(self)

        async def handle(request: Request) -> Response:
            if request.scope.get("fastapi.telemetry") is not None:
                return await full(request)
            return await handler(request)
        return handle


class _Lean:
    __slots__ = ("make", "runs")

    def __init__(self, make: Callable[[APIRoute], Handler], runs: tuple[Callable[..., Any], ...]) -> None:
        self.make, self.runs = make, runs


def served_by(make: Callable[[APIRoute], Handler], *, runs: tuple[Callable[..., Any], ...]
              ) -> Callable[[Endpoint], Endpoint]:
    """Mark an endpoint (below its route decorator) as served by `make(route)`, a handler that
    must do what FastAPI would: take the path parameters from `request.path_params`, read and
    validate a body (read_json_body, validated_body) and run the dependencies itself, in
    FastAPI's order. `runs` names those dependencies: a route whose dependencies are not exactly
    these (one added later to the decorator or the router) is refused at start-up rather than
    served without it. Its errors reach the app's exception handlers as the endpoint's do."""
    def mark(endpoint: Endpoint) -> Endpoint:
        endpoint.served_by = _Lean(make, runs)  # type: ignore[attr-defined]
        return endpoint
    return mark


def _check_lean(route: APIRoute, lean: _Lean) -> None:
    if getattr(routing, "_effective_route_context_var", None) is not None and \
            routing._effective_route_context_var.get() is not None:
        # built for an inclusion (include_router, with its own dependencies): add the route itself
        raise TypeError(f"{route.path}: a lean route is served as declared, not through include_router")
    dependant = route.dependant
    if dependant.query_params or dependant.header_params or dependant.cookie_params:
        raise TypeError(f"{route.path}: its lean handler reads no query, header or cookie parameter")
    declared = {dependency.call for dependency in dependant.dependencies}
    if declared != set(lean.runs):
        raise TypeError(f"{route.path}: its lean handler runs {sorted(map(repr, lean.runs))}, but the route "
                        f"depends on {sorted(map(repr, declared))}")
    if route.strict_content_type is not True and getattr(route.strict_content_type, "value", None) is not True:
        raise TypeError(f"{route.path}: read_json_body reads bodies as strict_content_type=True does")


async def read_json_body(request: Request) -> Any:
    """The body as FastAPI reads it for a JSON body model (fastapi.routing.get_request_handler):
    parsed for a JSON media type (`application/json`, `application/*+json`), else the bytes
    (which then fail validation), NO_BODY when empty. JSON that does not parse is its
    RequestValidationError; bytes that are not even text, or nested too deep, its 400. Read
    before any dependency runs, as FastAPI does."""
    try:
        raw = await request.body()
        if not raw:
            return NO_BODY
        content_type = request.headers.get("content-type")
        if content_type is None:  # strict_content_type, FastAPI's default: not read as JSON
            return raw
        if content_type != "application/json":
            message = email.message.Message()
            message["content-type"] = content_type
            subtype = message.get_content_subtype()
            if message.get_content_maintype() != "application" or not (subtype == "json" or
                                                                      subtype.endswith("+json")):
                return raw
        return await request.json()
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}], body=exc.doc) from exc
    except HTTPException:
        raise
    except Exception as exc:
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc


def validated_body(route: APIRoute, body: Any) -> Any:
    """The route's one body model from read_json_body's value, or FastAPI's RequestValidationError
    (the same errors, located under "body")."""
    field = route.body_field
    assert field is not None, f"{route.path} has no body"
    if body is NO_BODY:
        raise RequestValidationError([get_missing_field_error(loc=("body",))], body=None)
    value, errors = field.validate(body, {}, loc=("body",))
    if errors:
        raise RequestValidationError(errors, body=body)
    return value
