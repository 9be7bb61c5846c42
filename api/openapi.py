"""The OpenAPI document as it really is: no FastAPI 422 (validation errors are our 400 envelope),
bearer authentication declared, and the error envelope on every route."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_PUBLIC = {"/healthz", "/readyz", "/metrics"}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _build(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "An hx- API key (or the admin token)"}
    }
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
            if path in _PUBLIC:
                continue
            if path.startswith("/api/v1/files/"):
                operation["security"] = [{}, {"bearer": []}]  # a signed URL or the key
            else:
                operation["security"] = [{"bearer": []}]
    return spec
