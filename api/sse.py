"""Server-sent events that notice a client going away, whatever the server's ASGI spec version.

When the client disconnects, the body generator is cancelled at its current await, so its
`finally` can close the upstream request and settle the hold at once. A generator that is parked
at a `yield` instead (the client stopped reading, so `send` was blocked) is not reached by that
cancellation: the response closes it itself once streaming ends, rather than leave its `finally`
to the garbage collector."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


def sse_data(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(content, headers={"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:  # a no-op for a generator that finished or already closed
                with anyio.CancelScope(shield=True):
                    await aclose()
