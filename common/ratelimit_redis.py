"""The sliding-window counter on Redis in one round trip.

`limits` keeps the same two counters (this window's and the previous one's), but its script for a
hit answers only allowed/refused, so the `x-ratelimit-*` headers took a second script call: two
round trips and two Lua runs per request, ~14 % of a chat request's CPU in the API process. This
script takes the hit and returns the counters it decided on; the remaining count and the reset
time are computed from them with the formulas `limits` uses, so the headers read the same.

A window's counter lives twice the window length; when the current counter is older than one
window it becomes the previous one. The weighted count is
`floor(previous * previous_ttl / window) + current`. The keys are the ones `limits` uses for the
same item (`<prefix>:{<item key>}` and `.../-1`; the braces keep both on one Redis Cluster slot),
so processes of the previous release and of this one count together during a rolling deploy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis.asyncio

_HIT = """
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2])
local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end
local previous_count = tonumber(redis.call('get', KEYS[1])) or 0
local previous_ttl = math.max(0, tonumber(redis.call('pttl', KEYS[1])))
local current_count = tonumber(redis.call('get', KEYS[2])) or 0
current_ttl = math.max(0, tonumber(redis.call('pttl', KEYS[2])))
local allowed = 0
if math.floor(previous_count * previous_ttl / expiry) + current_count + 1 <= limit then
    allowed = 1
    if current_ttl > 0 then
        current_count = redis.call('incr', KEYS[2])
    else
        redis.call('set', KEYS[2], 1, 'PX', expiry * 2)
        current_count = 1
        current_ttl = expiry * 2
    end
end
return {allowed, previous_count, previous_ttl, current_count, current_ttl}
"""


@dataclass(frozen=True, slots=True)
class WindowHit:
    allowed: bool
    remaining: int
    reset_seconds: float


def window_hit(allowed: bool, limit: int, window_seconds: float, previous_count: int, previous_ttl: float,
               current_count: int, current_ttl: float) -> WindowHit:
    """Remaining and reset as `limits`' SlidingWindowCounterRateLimiter.get_window_stats has them."""
    weighted = previous_count * previous_ttl / window_seconds + current_count
    remaining = max(0, limit - math.floor(weighted))
    if not (previous_count or current_count):
        return WindowHit(allowed, remaining, 0.0)
    previous_reset = previous_ttl % (window_seconds / previous_count) if previous_count else math.inf
    # A counter made this millisecond lives exactly two windows, and `limits`' modulo says 0 s;
    # its first window ends one window from now.
    current_reset = (current_ttl % window_seconds or window_seconds) if current_count else math.inf
    return WindowHit(allowed, remaining, min(previous_reset, current_reset))


class RedisSlidingWindow:
    def __init__(self, client: redis.asyncio.Redis, prefix: str = "helyx-rl") -> None:
        self._script = client.register_script(_HIT)
        self._prefix = prefix

    async def hit(self, item_key: str, limit: int, window_seconds: int) -> WindowHit:
        """Count one hit on `item_key` (`limits`' `RateLimitItem.key_for(identity)`)."""
        current_key = f"{self._prefix}:{{{item_key}}}"
        allowed, previous, previous_ttl, current, current_ttl = await self._script(
            keys=[current_key + "/-1", current_key], args=[limit, window_seconds * 1000])
        return window_hit(bool(allowed), limit, window_seconds, int(previous), int(previous_ttl) / 1000,
                          int(current), int(current_ttl) / 1000)
