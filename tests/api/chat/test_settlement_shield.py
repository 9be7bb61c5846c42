"""A client that leaves while a finished stream is being settled cannot skip the settlement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import anyio

from api.chat_flow import _events
from common.chat_billing import Outcome
from common.providers.base import ChatDelta, Usage


class _Call(SimpleNamespace):
    def __init__(self) -> None:
        super().__init__(id="chatcmpl-test", created=0, entry=SimpleNamespace(id="gpt-4o"), fingerprint=None,
                         request=SimpleNamespace(messages=[{"role": "user", "content": "hi"}]), include_usage=False,
                         provider=None)
        self.finished: list[str] = []
        self.settling = anyio.Event()

    def chunk(self, delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> bytes:
        return b"chunk"

    async def finish(self, outcome: Outcome, stream: bool) -> Any:
        self.settling.set()
        await anyio.sleep(0.2)  # e.g. waiting for a free thread: a checkpoint a cancel would hit
        self.finished.append(outcome.status)
        return SimpleNamespace(charged=1, available=1)


async def _upstream() -> AsyncIterator[ChatDelta]:
    yield ChatDelta(finish_reason="stop", usage=Usage(3, 4))


def test_a_cancel_during_settlement_still_settles_once() -> None:
    call = _Call()

    async def run() -> None:
        async with anyio.create_task_group() as group:

            async def consume() -> None:
                async for _ in _events(call, ChatDelta(content="hello"), _upstream()):  # type: ignore[arg-type]
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
        return [event async for event in _events(call, ChatDelta(content="hello"), upstream())]  # type: ignore[arg-type]

    events = anyio.run(run)
    assert events[0] == b"chunk hello None []"
    assert events[1] == b"chunk  world stop []"  # sent, and without usage or helyx
    assert b'"error"' in events[2] and b"mid-stream" in events[2]
    assert len(events) == 3 and call.finished == ["interrupted"]
