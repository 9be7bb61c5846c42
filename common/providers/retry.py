"""The one retry loop for upstream calls (the API uses it; adapters never retry).

Only `UpstreamError`s with `retryable=True` are retried, at most `retries` more times (so
`retries + 1` attempts), except a timeout: a provider that took the request and did not answer
within the read timeout is not asked again (each try could last the whole timeout, two minutes
by default, while the client waits, and the first may still be generating at our expense).
Attempt n waits a random time in [½, 1] × min(max_delay, backoff × 2ⁿ)
(jitter spreads a burst of clients that failed together). An upstream Retry-After, carried as
`retry_after` on the error (see `common.providers.http.UpstreamHTTPError`), is honoured as a
minimum wait; when it is longer than `max_delay` we give up at once rather than hold the
client's request open for it.

A stream is retried only while opening it: once its first delta has arrived, output may have
reached the client, so a failure after that point is final.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from common.errors import UpstreamError, UpstreamTimeout
from common.providers.base import ChatDelta

T = TypeVar("T")

DEFAULT_MAX_DELAY = 8.0


async def call_with_retries(fn: Callable[[], Awaitable[T]], *, retries: int, backoff: float,
                            max_delay: float = DEFAULT_MAX_DELAY) -> T:
    """`await fn()`, retried on retryable UpstreamError; the last error is raised as it is."""
    attempt = 0
    while True:
        try:
            return await fn()
        except UpstreamError as exc:
            delay = retry_delay(exc, attempt, backoff=backoff, max_delay=max_delay)
            if attempt >= retries or delay is None:
                raise
        await asyncio.sleep(delay)
        attempt += 1


def retry_delay(exc: UpstreamError, attempt: int, *, backoff: float, max_delay: float) -> float | None:
    """How long to wait before the next attempt, or None if `exc` should not be retried."""
    if not exc.retryable or isinstance(exc, UpstreamTimeout):
        return None
    delay = random.uniform(0.5, 1.0) * min(max_delay, backoff * 2**attempt)
    retry_after: float | None = getattr(exc, "retry_after", None)
    if retry_after is not None:
        if retry_after > max_delay:
            return None
        delay = max(delay, retry_after)
    return delay


async def open_stream_with_retries(
    make_stream: Callable[[], AsyncIterator[ChatDelta]], *, retries: int, backoff: float,
    max_delay: float = DEFAULT_MAX_DELAY,
) -> tuple[ChatDelta, AsyncIterator[ChatDelta]]:
    """Open a stream and wait for its first delta, retrying failures up to that point.

    Returns the first delta and the still-open iterator, which the caller must consume or
    close (`aclose`). A failed attempt's iterator is closed before the next one opens.
    """

    async def first_delta() -> tuple[ChatDelta, AsyncIterator[ChatDelta]]:
        stream = make_stream()
        try:
            return await anext(stream), stream
        except StopAsyncIteration:
            await _close(stream)
            raise UpstreamError("The upstream provider ended the stream before any output",
                                retryable=True) from None
        except BaseException:
            await _close(stream)
            raise

    return await call_with_retries(first_delta, retries=retries, backoff=backoff, max_delay=max_delay)


async def _close(stream: AsyncIterator[ChatDelta]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
