"""POST /api/v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from api.chat_flow import create_completion
from api.deps import KeyCheckedInRoute, key_checked_in_route
from api.lean_route import Handler, LeanRoute, read_json_body, served_by, validated_body
from api.schemas.chat import ChatCompletionRequest
from api.schemas.responses import ChatCompletion, doc

router = APIRouter(prefix="/api/v1", tags=["chat"], route_class=LeanRoute)
_CHAT_RESPONSES = doc(ChatCompletion, 401, 402, 403, 404, 429, 502, 503, 504)
_CHAT_RESPONSES[200]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}


def _serve(route: APIRoute) -> Handler:
    """The route without FastAPI's solving (api.lean_route), in its order: the body read (JSON that
    does not parse is a 400 before the key), the key checked, the body validated."""
    async def handle(request: Request) -> Response:
        body = await read_json_body(request)
        await key_checked_in_route(request)
        return await chat_completions(validated_body(route, body), request)
    return handle


@router.post("/chat/completions", summary="Create a chat completion (OpenAI shape; SSE with stream=true)",
             responses=_CHAT_RESPONSES, dependencies=[KeyCheckedInRoute])
@served_by(_serve, runs=(key_checked_in_route,))
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """The key is looked up in the route, together with the reservation (api.chat_admission)."""
    return await create_completion(request.app.state.services, request, body, getattr(request.state, "log", {}))
