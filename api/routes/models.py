"""GET /api/v1/models and /api/v1/models/{id}: the directory."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api.deps import PrincipalDep, ServicesDep
from api.errors import unknown_route
from api.responses import json_response
from api.schemas.responses import ModelList, ModelView, doc
from common.catalog import ModelEntry
from common.settings import Settings

router = APIRouter(prefix="/api/v1", tags=["models"])

CREATED = 1735689600  # the directory's publication date; the SDK wants an int


def model_view(entry: ModelEntry, services: Any) -> dict[str, Any]:
    settings: Settings = services.settings
    rate = int(entry.rate) if entry.rate == entry.rate.to_integral_value() else float(entry.rate)
    return {
        "id": entry.id, "object": "model", "created": CREATED, "owned_by": entry.provider,
        "name": entry.name, "description": entry.description, "kind": entry.kind,
        "pricing": {"unit": entry.unit, "credits": rate}, "min_plan": entry.min_plan,
        "available": services.catalog.is_available(entry, settings),
        "simulated": services.catalog.is_simulated(entry, settings),
    }


@router.get("/models", summary="Every model: pricing, kind, minimum plan, availability",
            responses=doc(ModelList, 401))
async def list_models(_: PrincipalDep, services: ServicesDep) -> Any:
    data = [model_view(e, services) for e in services.catalog.models.values()]
    return json_response({"object": "list", "data": data})


@router.get("/models/{model_id:path}", summary="One model", responses=doc(ModelView, 401, 404))
async def get_model(model_id: str, request: Request, _: PrincipalDep, services: ServicesDep) -> Any:
    if not model_id:  # `/models/`: a trailing slash, answered as on every other route
        raise unknown_route(request)
    return json_response(model_view(services.catalog.get(model_id), services))
