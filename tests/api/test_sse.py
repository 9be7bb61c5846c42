"""EventStreamResponse runs the caller's cleanup when a client leaves before the first chunk."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import anyio

from api.sse import EventStreamResponse


def test_a_client_gone_before_the_first_chunk_runs_on_unstarted_once() -> None:
    events: list[str] = []

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            events.append("started")
            yield b"data: 1\n\n"
        finally:
            events.append("generator cleanup")

    async def on_unstarted() -> None:
        events.append("on_unstarted")

    async def receive() -> dict[str, str]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        await anyio.sleep(0)

    async def run() -> None:
        response = EventStreamResponse(body(), on_unstarted=on_unstarted)
        await response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)

    anyio.run(run)
    assert events == ["on_unstarted"]


def test_a_stream_that_ran_does_not_call_on_unstarted() -> None:
    events: list[str] = []

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield b"data: 1\n\n"
        finally:
            events.append("generator cleanup")

    async def on_unstarted() -> None:
        events.append("on_unstarted")

    async def receive() -> dict[str, str]:
        await anyio.sleep(5)
        return {"type": "http.disconnect"}

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def run() -> None:
        response = EventStreamResponse(body(), on_unstarted=on_unstarted)
        await response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)

    anyio.run(run)
    assert events == ["generator cleanup"]
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
