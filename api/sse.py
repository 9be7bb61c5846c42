"""Server-sent events that notice a client going away, whatever the server's ASGI spec version.

When the client disconnects, the body generator is cancelled at its current await, so its
`finally` can close the upstream request and settle the hold at once. A generator that is parked
at a `yield` instead (the client stopped reading, so `send` was blocked) is not reached by that
cancellation: the response closes it itself once streaming ends, rather than leave its `finally`
to the garbage collector. One that never started (the client left before the first chunk) runs
the caller's `on_unstarted` instead."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


def sse_data(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: AsyncGenerator[bytes, None], headers: dict[str, str] | None = None,
                 on_unstarted: Callable[[], Awaitable[None]] | None = None) -> None:
        self._generator = _Tracked(content)
        super().__init__(self._generator,
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})
        self._on_unstarted = on_unstarted

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
            # A client gone before the first chunk was pulled: the generator's own cleanup will
            # never run, so run the caller's instead (close the upstream, settle the hold).
            unstarted = not self._generator.started
            with anyio.CancelScope(shield=True):
                await self._generator.aclose()  # a no-op for a generator that finished or already closed
                if unstarted and self._on_unstarted is not None:
                    await self._on_unstarted()


class _Tracked:
    """An async iterator over a generator that remembers whether it was ever pulled."""

    def __init__(self, generator: AsyncGenerator[bytes, None]) -> None:
        self._generator = generator
        self.started = False

    def __aiter__(self) -> _Tracked:
        return self

    async def __anext__(self) -> bytes:
        if self.started:
            # A send to a client that has gone returns at once, and an upstream whose bytes are
            # already buffered never suspends either: without this checkpoint the disconnect
            # listener would not run until the whole upstream stream had been read and billed.
            await anyio.lowlevel.checkpoint()
        self.started = True
        return await self._generator.__anext__()

    async def aclose(self) -> None:
        await self._generator.aclose()
