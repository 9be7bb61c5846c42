"""A client that leaves while a finished stream is being settled cannot skip the settlement; a
stream that stops before its end is settled once, and says why: the client left, the server cut
it (an error event left as its last words), or the gateway failed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import anyio
import orjson
import pytest

from api.chat_stream import _events
from api.sse import StreamEnd
from common.chat_billing import Outcome
from common.providers.base import ChatDelta, Usage


class _Call(SimpleNamespace):
    def __init__(self) -> None:
        super().__init__(id="chatcmpl-test", created=0, entry=SimpleNamespace(id="gpt-4o"), fingerprint=None,
                         request=SimpleNamespace(messages=[{"role": "user", "content": "hi"}], tools=None),
                         include_usage=False, provider=None)
        self.finished: list[str] = []
        self.codes: list[str | None] = []
        self.settling = anyio.Event()

    def chunk(self, delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> bytes:
        return b"chunk"

    async def finish(self, outcome: Outcome, stream: bool) -> Any:
        self.settling.set()
        await anyio.sleep(0.2)  # e.g. waiting for a free thread: a checkpoint a cancel would hit
        self.finished.append(outcome.status)
        self.codes.append(outcome.error_code)
        return SimpleNamespace(charged=1, available=1)

    async def finish_or_log(self, outcome: Outcome, stream: bool) -> Any:
        return await self.finish(outcome, stream)


async def _upstream() -> AsyncIterator[ChatDelta]:
    yield ChatDelta(finish_reason="stop", usage=Usage(3, 4))


def test_a_cancel_during_settlement_still_settles_once() -> None:
    call = _Call()

    async def run() -> None:
        async with anyio.create_task_group() as group:

            async def consume() -> None:
                async for _ in _events(call, ChatDelta(content="hello"), _upstream(), StreamEnd()):  # type: ignore[arg-type]
                    pass

            group.start_soon(consume)
            await call.settling.wait()
            group.cancel_scope.cancel()  # the client goes away mid-settlement

    anyio.run(run)
    assert call.finished == ["succeeded"]


def test_a_held_finish_chunk_is_sent_before_an_error_that_follows_it() -> None:
    """Without include_usage the finish chunk waits to be the last; an upstream error after it
    must not swallow the text it carries (some providers put the last words there)."""
    from common.errors import UpstreamError

    class _Recorder(_Call):
        def chunk(self, delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> bytes:
            return f"chunk {delta.get('content')} {finish_reason} {sorted(extra)}".encode()

        async def finish(self, outcome: Outcome, stream: bool) -> Any:
            self.finished.append(outcome.status)
            return SimpleNamespace(charged=1, available=1)

    async def upstream() -> AsyncIterator[ChatDelta]:
        yield ChatDelta(content=" world", finish_reason="stop")
        raise UpstreamError("connection reset")

    call = _Recorder()

    async def run() -> list[bytes]:
        return [event async for event in _events(call, ChatDelta(content="hello"), upstream(), StreamEnd())]  # type: ignore[arg-type]

    events = anyio.run(run)
    assert events[0] == b"chunk hello None []"
    assert events[1] == b"chunk  world stop []"  # sent, and without usage or helyx
    assert b'"error"' in events[2] and b"mid-stream" in events[2]
    assert len(events) == 3 and call.finished == ["interrupted"]


async def _endless() -> AsyncIterator[ChatDelta]:
    while True:
        await anyio.sleep(0.01)
        yield ChatDelta(content="more ")


@pytest.mark.parametrize("client_gone", [True, False])
def test_a_stream_stopped_mid_way_is_settled_once_and_says_who_stopped_it(client_gone: bool) -> None:
    call, end = _Call(), StreamEnd()

    async def run() -> None:
        async with anyio.create_task_group() as group:

            async def consume() -> None:
                async for _ in _events(call, ChatDelta(content="hello"), _endless(), end):  # type: ignore[arg-type]
                    pass

            group.start_soon(consume)
            await anyio.sleep(0.05)
            end.client_gone = client_gone  # set before the cancel, as EventStreamResponse does
            group.cancel_scope.cancel()  # a disconnect, or uvicorn at the end of its shutdown grace

    anyio.run(run)
    assert call.finished == ["cancelled"]  # charged for what was produced either way
    if client_gone:
        assert call.codes == ["client_disconnected"] and end.last_words is None  # nobody to tell
    else:
        assert call.codes == ["server_shutdown"]
        assert end.last_words is not None
        last = orjson.loads(end.last_words.removeprefix(b"data: "))
        assert last["error"]["code"] == "server_shutdown" and last["helyx"]["generation_id"] == call.id


def test_a_fault_of_the_gateway_mid_stream_costs_nothing_and_is_told() -> None:
    async def upstream() -> AsyncIterator[ChatDelta]:
        yield ChatDelta(content=" world")
        raise KeyError("a bug, not an upstream error")

    call, end = _Call(), StreamEnd()

    async def run() -> None:
        async for _ in _events(call, ChatDelta(content="hello"), upstream(), end):  # type: ignore[arg-type]
            pass

    with pytest.raises(KeyError):
        anyio.run(run)
    assert (call.finished, call.codes) == (["interrupted"], ["internal_error"])  # a failure: nothing charged
    assert end.last_words is not None and b"internal_error" in end.last_words
