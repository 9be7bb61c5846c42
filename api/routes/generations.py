"""GET /api/v1/generations/{id}: one chat completion's record."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, ServicesDep
from api.responses import json_response
from api.schemas.responses import GenerationView, doc
from common.generations import get_generation

router = APIRouter(prefix="/api/v1", tags=["chat"])


@router.get("/generations/{generation_id}", summary="A chat completion's record, also for cancelled streams",
            responses=doc(GenerationView, 401, 404))
async def read_generation(generation_id: str, principal: PrincipalDep, services: ServicesDep) -> Any:
    return json_response(
        await run_in_threadpool(get_generation, services.engine, principal.account_id, generation_id)
    )
