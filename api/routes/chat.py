"""POST /api/v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from api.chat_flow import create_completion
from api.deps import KeyCheckedInRoute
from api.schemas.chat import ChatCompletionRequest
from api.schemas.responses import ChatCompletion, doc

router = APIRouter(prefix="/api/v1", tags=["chat"])
_CHAT_RESPONSES = doc(ChatCompletion, 401, 402, 403, 404, 429, 502, 503, 504)
_CHAT_RESPONSES[200]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}


@router.post("/chat/completions", summary="Create a chat completion (OpenAI shape; SSE with stream=true)",
             responses=_CHAT_RESPONSES, dependencies=[KeyCheckedInRoute])
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """The key is looked up in the route, together with the reservation (api.chat_admission)."""
    return await create_completion(request.app.state.services, request, body, getattr(request.state, "log", {}))
