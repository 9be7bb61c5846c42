"""POST /api/v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from api.chat_flow import create_completion
from api.deps import PrincipalDep, ServicesDep
from api.schemas.chat import ChatCompletionRequest

router = APIRouter(prefix="/api/v1", tags=["chat"])


@router.post("/chat/completions", summary="Create a chat completion (OpenAI shape; SSE with stream=true)")
async def chat_completions(body: ChatCompletionRequest, request: Request, principal: PrincipalDep,
                           services: ServicesDep) -> Response:
    return await create_completion(services, principal, body, getattr(request.state, "log", {}))
