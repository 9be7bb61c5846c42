"""Routes FastAPI documents from their endpoint's signature but serves through a plain handler.

On every request FastAPI solves an endpoint's dependencies and validates its parameters: for a
job or video poll that was a sixth of the Python calls of the whole request (bench/README.md,
twenty-first round). The polled routes take one string from the path and one dependency that
reads a header, so a handler of `(request) -> Response` can do the same directly. The endpoint
stays as it is, for the OpenAPI document and for anything else that calls it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Awaitable[Response]]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


class LeanRoute(APIRoute):
    """An APIRoute whose endpoint, marked by `served_by`, is served by its plain handler."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler: Handler | None = getattr(self.endpoint, "served_by", None)
        return handler if handler is not None else super().get_route_handler()


def served_by(handler: Handler) -> Callable[[Endpoint], Endpoint]:
    """Mark an endpoint (below its route decorator) as served by `handler`, which must do what
    FastAPI would: take the path parameters from `request.path_params` and resolve the
    dependencies itself. Its errors reach the app's exception handlers as the endpoint's do."""
    def mark(endpoint: Endpoint) -> Endpoint:
        endpoint.served_by = handler  # type: ignore[attr-defined]
        return endpoint
    return mark
