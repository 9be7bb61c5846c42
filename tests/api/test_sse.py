"""EventStreamResponse runs the caller's cleanup when a client leaves before the first chunk, and a
stream the server cuts (not its client) ends with the last words its cleanup left."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import anyio

from api.sse import LAST_WORDS_SECONDS, EventStreamResponse, StreamEnd


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


def _endless_body(end: StreamEnd, events: list[str]) -> AsyncGenerator[bytes, None]:
    async def body() -> AsyncGenerator[bytes, None]:
        try:
            while True:
                yield b"data: chunk\n\n"
                await anyio.sleep(0.01)
        finally:  # as api.chat_stream's cleanup: last words only for a stream the server cut
            events.append("client gone" if end.client_gone else "cut")
            if not end.client_gone:
                end.last_words = b"data: last words\n\n"

    return body()


def _run_cut(disconnect_after: float | None, send_blocks: bool = False) -> tuple[list[str], list[dict[str, object]]]:
    """A stream cancelled from outside after 0.1 s (uvicorn at the end of its grace), or left by
    its client after `disconnect_after` s; what the body's cleanup saw and what was sent."""
    end, events, sent = StreamEnd(), [], []

    async def receive() -> dict[str, str]:
        await anyio.sleep(disconnect_after if disconnect_after is not None else 60)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if send_blocks and message.get("body") == b"data: last words\n\n":
            await anyio.sleep(60)  # a client that stopped reading
        sent.append(message)

    async def run() -> None:
        response = EventStreamResponse(_endless_body(end, events), end=end)
        with anyio.move_on_after(0.1):
            await response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)

    anyio.run(run)
    return events, sent


def test_a_stream_the_server_cuts_ends_with_its_last_words_and_a_clean_end_of_body() -> None:
    events, sent = _run_cut(disconnect_after=None)
    assert events == ["cut"]
    assert sent[-2:] == [{"type": "http.response.body", "body": b"data: last words\n\n", "more_body": True},
                         {"type": "http.response.body", "body": b"", "more_body": False}]


def test_a_stream_its_client_leaves_says_nothing_more() -> None:
    events, sent = _run_cut(disconnect_after=0.03)
    assert events == ["client gone"]
    assert all(m.get("body") != b"data: last words\n\n" for m in sent)


def test_last_words_to_a_client_that_stopped_reading_give_up_in_time() -> None:
    started = time.monotonic()
    events, _ = _run_cut(disconnect_after=None, send_blocks=True)
    assert events == ["cut"] and time.monotonic() - started < LAST_WORDS_SECONDS + 1.5
