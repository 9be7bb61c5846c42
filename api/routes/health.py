"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import ServicesDep
from api.responses import json_response
from api.schemas.responses import Health, NotReady, Ready, doc
from common import health
from common.errors import ServiceUnavailable

router = APIRouter(tags=["health"])


# HEAD too (left out of the OpenAPI document, as the downloads' HEAD): load balancers and uptime
# monitors that probe with HEAD got 405 and saw the service down.
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", summary="The process is alive", responses=doc(Health))
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", summary="Database and broker are reachable",
            responses={**doc(Ready), 503: {"model": NotReady, "description": "Not ready: what failed"}})
async def readyz(services: ServicesDep) -> Any:
    """A 503 carries the error envelope every error has (SPEC §2) beside the checks."""
    checks = await run_in_threadpool(health.check, services.settings, services.engine)
    if all(v == "ok" for v in checks.values()):
        return json_response({"status": "ok", "checks": checks})
    failing = ", ".join(f"{name}: {value}" for name, value in checks.items() if value != "ok")
    error = ServiceUnavailable(f"Not ready: {failing}.")
    return json_response({**error.envelope(), "status": "unavailable", "checks": checks}, 503)
