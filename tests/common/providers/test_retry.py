"""The shared retry loop: what it retries, how long it waits, and where a stream stops retrying."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from common.errors import UpstreamError, UpstreamTimeout
from common.providers.base import ChatDelta
from common.providers.http import UpstreamHTTPError
from common.providers.openai_compat import OpenAICompatProvider
from common.providers.retry import call_with_retries, open_stream_with_retries, retry_delay
from tests.common.providers.helpers import API_KEY, chat_request
from tests.fakes import Behaviour, FakeUpstream

pytestmark = pytest.mark.anyio


class Flaky:
    """Fails with `error` the first `failures` calls, then answers "ok"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


async def test_retryable_errors_are_retried_until_success() -> None:
    fn = Flaky(2, UpstreamError("busy", retryable=True))
    assert await call_with_retries(fn, retries=3, backoff=0.001) == "ok"
    assert fn.calls == 3


async def test_it_gives_up_after_the_retries_and_raises_the_last_error() -> None:
    error = UpstreamError("busy", retryable=True)
    fn = Flaky(10, error)
    with pytest.raises(UpstreamError) as caught:
        await call_with_retries(fn, retries=2, backoff=0.001)
    assert caught.value is error
    assert fn.calls == 3


@pytest.mark.parametrize("error", [UpstreamError("bad request", retryable=False), ValueError("bug"),
                                   UpstreamTimeout("no answer within the read timeout")])
async def test_errors_that_a_retry_cannot_mend_are_raised_at_once(error: Exception) -> None:
    fn = Flaky(1, error)
    with pytest.raises(type(error)):
        await call_with_retries(fn, retries=5, backoff=0.001)
    assert fn.calls == 1


async def test_an_upstream_retry_after_is_waited_for() -> None:
    fn = Flaky(1, UpstreamHTTPError("slow down", retryable=True, upstream_status=429, retry_after=0.25))
    started = time.monotonic()
    assert await call_with_retries(fn, retries=1, backoff=0.001) == "ok"
    assert time.monotonic() - started >= 0.25


async def test_a_retry_after_longer_than_the_maximum_delay_is_not_waited_for() -> None:
    fn = Flaky(1, UpstreamHTTPError("slow down", retryable=True, upstream_status=429, retry_after=60))
    with pytest.raises(UpstreamHTTPError):
        await call_with_retries(fn, retries=3, backoff=0.001, max_delay=2.0)
    assert fn.calls == 1


def test_the_delay_grows_exponentially_with_jitter_and_is_bounded() -> None:
    error = UpstreamError("busy", retryable=True)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (2, 0.4), (6, 5.0), (20, 5.0)]:
        delays = [retry_delay(error, attempt, backoff=0.1, max_delay=5.0) for _ in range(200)]
        assert all(d is not None and ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


class FakeStreams:
    """make_stream for tests: the first `failures` streams fail before (or after) a delta."""

    def __init__(self, failures: int, *, fail_after_first: bool = False, empty: bool = False) -> None:
        self.failures, self.fail_after_first, self.empty = failures, fail_after_first, empty
        self.opened = self.closed = 0

    def __call__(self) -> AsyncIterator[ChatDelta]:
        return self._stream(self.opened)

    async def _stream(self, number: int) -> AsyncIterator[ChatDelta]:
        self.opened += 1
        try:
            if self.empty and number < self.failures:
                return
            if number < self.failures and not self.fail_after_first:
                raise UpstreamError("not yet", retryable=True)
            yield ChatDelta(content=f"first#{number}")
            if self.fail_after_first:
                raise UpstreamError("mid-stream", retryable=True)
            yield ChatDelta(content="second", finish_reason="stop")
        finally:
            self.closed += 1


async def test_a_stream_is_reopened_until_its_first_delta_arrives() -> None:
    streams = FakeStreams(2)
    first, rest = await open_stream_with_retries(streams, retries=3, backoff=0.001)
    assert first.content == "first#2"
    assert [d.content async for d in rest] == ["second"]
    assert streams.opened == 3
    assert streams.closed == 3


async def test_a_stream_is_never_retried_after_its_first_delta() -> None:
    streams = FakeStreams(0, fail_after_first=True)
    first, rest = await open_stream_with_retries(streams, retries=3, backoff=0.001)
    assert first.content == "first#0"
    with pytest.raises(UpstreamError, match="mid-stream"):
        await anext(rest)
    assert streams.opened == 1


async def test_a_stream_that_ends_without_any_delta_counts_as_a_retryable_failure() -> None:
    streams = FakeStreams(1, empty=True)
    first, _ = await open_stream_with_retries(streams, retries=1, backoff=0.001)
    assert first.content == "first#1"
    streams = FakeStreams(5, empty=True)
    with pytest.raises(UpstreamError):
        await open_stream_with_retries(streams, retries=1, backoff=0.001)


async def test_retrying_a_real_adapter_stream_through_upstream_500s(
    openai_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    openai_fake.behaviour = Behaviour(fail_first=2, fail_status=500)
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY)
    first, rest = await open_stream_with_retries(lambda: provider.stream(chat_request()),
                                                 retries=2, backoff=0.001)
    text = first.content + "".join([d.content async for d in rest])
    assert text == openai_fake.behaviour.answer
    assert openai_fake.request_count == 3
    assert openai_fake.streams_opened == 1
