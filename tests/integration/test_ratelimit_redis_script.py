"""The one-round-trip sliding window (common/ratelimit_redis.py) decides exactly as the `limits`
library's own Redis sliding window does, hit for hit, on a real Redis, and uses the same keys.

Time is not waited for: both implementations read the windows' age from the keys' TTLs, so the
test moves time by setting the same TTLs on both key sets (PEXPIRE) before each step, at values
whose weighted counts lie far from an integer (a few milliseconds between the two calls cannot
change a decision)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from common.ratelimit_redis import RedisSlidingWindow

pytestmark = pytest.mark.redis
LIMIT = 10
ITEM = RateLimitItemPerMinute(LIMIT)
ITEM_KEY = ITEM.key_for("key-1")


async def _steps(redis_url: str) -> list[tuple[str, list[tuple[bool, int]], list[tuple[bool, int]]]]:
    client = redis.asyncio.Redis.from_url(redis_url)
    ours = RedisSlidingWindow(client, prefix="ours")
    theirs = SlidingWindowCounterRateLimiter(RedisStorage("async+" + redis_url, implementation="redispy",
                                                          key_prefix="theirs"))

    async def hits(n: int) -> tuple[list[tuple[bool, int]], list[tuple[bool, int]]]:
        mine, other = [], []
        for _ in range(n):
            got = await ours.hit(ITEM_KEY, LIMIT, 60)
            mine.append((got.allowed, got.remaining))
            allowed = await theirs.hit(ITEM, "key-1")
            other.append((allowed, max(0, (await theirs.get_window_stats(ITEM, "key-1")).remaining)))
        return mine, other

    async def age_current_window(ttl_ms: int) -> None:
        for prefix in ("ours", "theirs"):
            assert await client.pexpire(f"{prefix}:{{{ITEM_KEY}}}", ttl_ms)

    steps: list[tuple[str, Any, Any]] = []
    try:
        steps.append(("a fresh window: 12 hits", *await hits(12)))
        await age_current_window(90_000)  # 30 s into the window: still the current one
        steps.append(("30 s later", *await hits(1)))
        await age_current_window(45_000)  # 75 s: the counter becomes the previous window, weight 0.75
        steps.append(("75 s later, the window rolled over", *await hits(4)))
        keys = sorted(k.decode() for k in await client.keys("ours:*"))
        steps.append(("keys", keys, [f"ours:{{{ITEM_KEY}}}", f"ours:{{{ITEM_KEY}}}/-1"]))
    finally:
        for prefix in ("ours", "theirs"):
            await client.delete(f"{prefix}:{{{ITEM_KEY}}}", f"{prefix}:{{{ITEM_KEY}}}/-1")
        await client.aclose()
    return steps


def test_decisions_remaining_and_keys_match_the_limits_library(redis_url: str) -> None:
    steps = asyncio.run(_steps(redis_url))
    for name, ours, theirs in steps:
        assert ours == theirs, name
    expected = [
        [(True, 9), (True, 8), (True, 7), (True, 6), (True, 5), (True, 4), (True, 3), (True, 2), (True, 1),
         (True, 0), (False, 0), (False, 0)],
        [(False, 0)],
        # previous 10 x ~0.75 = 7 (floor), so 3 more fit: remaining 10 - floor(7.5 + 1) = 2, then 1, 0
        [(True, 2), (True, 1), (True, 0), (False, 0)],
    ]
    assert [ours for _, ours, _ in steps[:3]] == expected


def test_keys_are_counted_apart_and_expire(redis_url: str) -> None:
    async def run() -> tuple[list[bool], list[bool], int, float]:
        client = redis.asyncio.Redis.from_url(redis_url)
        window = RedisSlidingWindow(client, prefix="apart")
        try:
            one = [(await window.hit("a", 2, 60)).allowed for _ in range(3)]
            two = [(await window.hit("b", 2, 60)).allowed for _ in range(3)]
            first = await window.hit("c", 5, 60)
            ttl = await client.pttl("apart:{a}")
        finally:
            await client.delete("apart:{a}", "apart:{b}", "apart:{c}")
            await client.aclose()
        return one, two, ttl, first.reset_seconds

    one, two, ttl, reset = asyncio.run(run())
    assert one == two == [True, True, False]
    assert 60_000 < ttl <= 120_000  # twice the window, then gone
    assert 59 < reset <= 60  # the first window ends a window from now (`limits` said 0 s here)
