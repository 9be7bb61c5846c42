"""Server-sent events that notice a client going away, whatever the server's ASGI spec version.

When the client disconnects, the body generator is cancelled at its current await, so its
`finally` can close the upstream request and settle the hold at once. A generator that is parked
at a `yield` instead (the client stopped reading, so `send` was blocked) is not reached by that
cancellation: the response closes it itself once streaming ends, rather than leave its `finally`
to the garbage collector. One that never started (the client left before the first chunk) runs
the caller's `on_unstarted` instead.

A stream can also be cut by the server: uvicorn cancels what still runs at the end of its
shutdown grace. The body's cleanup tells the two apart with `StreamEnd.client_gone` (set before a
disconnect cancels it), and may leave `last_words` (an error event) that the response then sends,
with the end of the body, while the connection is still there: the client learns why its stream
stopped, instead of reading a truncated chunked body."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from api.json_bytes import json_bytes

LAST_WORDS_SECONDS = 2.0  # the most a cut stream's last event may wait for a slow reader


def sse_data(payload: Any) -> bytes:
    return b"data: " + json_bytes(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


@dataclass
class StreamEnd:
    """How a stream that did not run to its end ended, shared by the response and its body."""

    client_gone: bool = False  # the client disconnected (set before the body is cancelled)
    last_words: bytes | None = None  # left by the body's cleanup: sent if the server cut the stream


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: AsyncGenerator[bytes, None], headers: dict[str, str] | None = None,
                 on_unstarted: Callable[[], Awaitable[None]] | None = None, end: StreamEnd | None = None) -> None:
        self._generator = _Tracked(content)
        super().__init__(self._generator,
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})
        self._on_unstarted = on_unstarted
        self.end = end or StreamEnd()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        head_sent = finished = False

        async def send_tracked(message: Message) -> None:
            nonlocal head_sent
            head_sent = True  # the first message is the head
            await send(message)

        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    nonlocal finished
                    try:
                        await self.stream_response(send_tracked)
                    except (OSError, ClientDisconnect):  # a server whose send raises when the client is gone
                        self.end.client_gone = True
                        raise
                    finished = True
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                self.end.client_gone = True
                group.cancel_scope.cancel()
        finally:
            # A client gone before the first chunk was pulled: the generator's own cleanup will
            # never run, so run the caller's instead (close the upstream, settle the hold).
            unstarted = not self._generator.started
            with anyio.CancelScope(shield=True):
                await self._generator.aclose()  # a no-op for a generator that finished or already closed
                if unstarted and self._on_unstarted is not None:
                    await self._on_unstarted()
                if self.end.last_words is not None and head_sent and not finished and not self.end.client_gone:
                    await _say_last_words(send, self.end.last_words)


async def _say_last_words(send: Send, event: bytes) -> None:
    """The event, then the end of the body, to a client that may be gone or slow: best effort."""
    with anyio.move_on_after(LAST_WORDS_SECONDS), contextlib.suppress(Exception):
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


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
