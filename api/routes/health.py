"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import ServicesDep
from api.responses import json_response
from api.schemas.responses import Health, Ready, doc
from common import health

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive", responses=doc(Health))
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database and broker are reachable", responses=doc(Ready, 503))
async def readyz(services: ServicesDep) -> Any:
    checks = await run_in_threadpool(health.check, services.settings, services.engine)
    ready = all(v == "ok" for v in checks.values())
    return json_response({"status": "ok" if ready else "unavailable", "checks": checks}, 200 if ready else 503)
