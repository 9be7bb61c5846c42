"""Helpers shared by the chat adapter tests."""

from __future__ import annotations

from typing import Any

from common.errors import UpstreamError
from common.providers.base import ChatDelta, ChatProvider, ChatRequest

API_KEY = "sk-test-secret-provider-key"


def chat_request(**overrides: Any) -> ChatRequest:
    fields: dict[str, Any] = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 64,
    }
    fields.update(overrides)
    return ChatRequest(**fields)


async def collect(provider: ChatProvider, request: ChatRequest) -> tuple[list[ChatDelta], UpstreamError | None]:
    """Every delta a stream yields, and the error that ended it (None if it ended normally)."""
    deltas: list[ChatDelta] = []
    try:
        async for delta in provider.stream(request):
            deltas.append(delta)
    except UpstreamError as exc:
        return deltas, exc
    return deltas, None


async def failure_of(provider: ChatProvider, request: ChatRequest, *,
                     stream: bool) -> tuple[list[ChatDelta], UpstreamError | None]:
    """The same call made streamed (`collect`) or not: what it produced, and the error it ended with
    (a call that is not streamed produces nothing before its error, or returns: then None)."""
    if stream:
        return await collect(provider, request)
    try:
        await provider.complete(request)
    except UpstreamError as exc:
        return [], exc
    return [], None


def text_of(deltas: list[ChatDelta]) -> str:
    return "".join(d.content for d in deltas)

