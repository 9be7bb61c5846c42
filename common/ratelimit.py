"""Per-key request rate limits by plan: a sliding-window counter (close to a true moving window at
the cost of a fixed one).

With `HELYX_REDIS_URL` the counters live in Redis and are shared by every API process
(`common/ratelimit_redis.py`: one script call per request); without it they live in this process,
in the `limits` library's memory storage. A Redis that does not answer within a second makes the
request fail with 503 rather than pass unlimited.

The Redis connections are a blocking pool: a burst of more concurrent requests than the pool
holds waits (up to that same second) for a free connection, rather than failing at once as
redis-py's default pool does when its 100 connections are in use. The second is one deadline
around the whole check, not a socket timeout per command: redis-py runs every write under a
socket timeout as a separate task (`asyncio.wait_for`), which cost more than the write itself.
redis-py drops a connection whose command was interrupted, so none is reused mid-reply.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

import redis.asyncio
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from common.errors import RateLimited, ServiceUnavailable
from common.ratelimit_redis import RedisSlidingWindow, WindowHit, window_hit
from common.settings import Settings
from common.throttled_log import ThrottledWarnings

REDIS_TIMEOUT_SECONDS = 1.0
REDIS_POOL_SIZE = 100  # connections per API process; more concurrent requests queue for one
log = logging.getLogger("helyx.api")


@dataclass(frozen=True, slots=True)
class RateDecision:
    limit: int
    remaining: int
    reset_seconds: float

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": f"{max(0.0, self.reset_seconds):.3f}s",
        }


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._warnings = ThrottledWarnings(log)
        self._redis: RedisSlidingWindow | None = None
        self._memory_storage = MemoryStorage()  # the counters when there is no Redis
        if settings.redis_url:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=REDIS_POOL_SIZE, timeout=None, socket_timeout=None,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            self._redis = RedisSlidingWindow(redis.asyncio.Redis(connection_pool=pool))
        self._memory = SlidingWindowCounterRateLimiter(self._memory_storage)
        self._items = {
            plan: RateLimitItemPerMinute(settings.rate_limit_for(plan)) for plan in ("free", "plus", "pro", "ultra")
        }

    async def hit(self, key_id: str, plan: str) -> RateDecision:
        """Count one request for `key_id`; RateLimited (with Retry-After) when over the plan's rate."""
        item = self._items[plan]
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                counted = await self._count(item, key_id)
        except Exception as exc:
            self._log_failure(exc)
            raise ServiceUnavailable("Rate limiting is unavailable; try again shortly.") from exc
        decision = RateDecision(item.amount, counted.remaining, counted.reset_seconds)
        if not counted.allowed:
            retry_after = max(1, math.ceil(decision.reset_seconds))
            raise RateLimited(
                f"Rate limit reached: {item.amount} requests per minute on the {plan} plan. "
                f"Retry in {retry_after} s.",
                headers={**decision.headers(), "retry-after": str(retry_after)},
            )
        return decision

    def _log_failure(self, exc: Exception) -> None:
        """The cause of the 503s, for the operator: at most one line per 10 s."""
        self._warnings.warning("redis", "rate limiting failed, answering 503: %s: %s", type(exc).__name__,
                               exc or "no answer in time")

    async def _count(self, item: RateLimitItem, key_id: str) -> WindowHit:
        if self._redis is not None:  # one round trip
            return await self._redis.hit(item.key_for(key_id), item.amount, item.get_expiry())
        allowed = await self._memory.hit(item, key_id)
        counters = await self._memory_storage.get_sliding_window(item.key_for(key_id), item.get_expiry())
        return window_hit(allowed, item.amount, item.get_expiry(), *counters)
