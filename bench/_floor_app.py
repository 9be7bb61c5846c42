"""The floor under bench/chat.py's c=1 latency (never used in production):

    uvicorn bench._floor_app:app

The real app (`api.app.create_app`: its middleware, error handlers and routes), with one route
put in front of the others for `POST /api/v1/chat/completions` that keeps what any Python
gateway on this stack does and drops what billing does. Kept: uvicorn, the middleware (request
id, body limit, metrics, logs), FastAPI's validation of the same body model, the catalog, the
provider adapter with the shared upstream client, the response in the same shape. Dropped:
the key lookup, the rate limit, the reservation, the settlement and the generation row.

Measured beside the gateway and the direct call in the same run, it splits the gateway's added
latency in two: what the web stack and the upstream hop cost (floor minus direct), and what
authentication and billing cost on top (gateway minus floor).
"""

from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from api.app import create_app
from api.responses import json_response
from api.schemas.chat import ChatCompletionRequest
from common.providers.base import ChatRequest

router = APIRouter()


@router.post("/api/v1/chat/completions")
async def floor_chat(body: ChatCompletionRequest, request: Request) -> Response:
    services = request.app.state.services
    entry = services.catalog.resolve(body.model, "ultra", services.settings, kind="chat")
    provider = services.providers.chat(entry)
    result = await provider.complete(ChatRequest(
        model=entry.upstream_model, messages=body.message_dicts(),
        max_tokens=body.requested_max_tokens or services.settings.default_max_tokens,
        temperature=body.temperature, top_p=body.top_p, stop=body.stop, presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty, user=body.user))
    usage = result.usage
    return json_response({
        "id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": int(time.time()),
        "model": entry.id, "system_fingerprint": result.system_fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.content, "refusal": None},
                     "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": None if usage is None else {"prompt_tokens": usage.prompt_tokens,
                                             "completion_tokens": usage.completion_tokens,
                                             "total_tokens": usage.total_tokens},
        "helyx": {"credits_charged": 0, "credits_remaining": 0},
    })


app = create_app()
app.router.routes.insert(0, router.routes[0])  # matched before the real chat route
