"""Time, in one place, so tests can freeze it and every day boundary is computed the same way.

The billing day is the calendar date in `HELYX_TIMEZONE` (Asia/Karachi by default, UTC+5 with
no daylight saving, so midnight PKT is 19:00 UTC).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

_source: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return _source()


@contextmanager
def frozen(at: datetime) -> Iterator[Callable[[timedelta], None]]:
    """Freeze `now()` at `at`; yields a function that moves the frozen clock forward."""
    global _source
    current = [at.astimezone(UTC)]
    previous = _source
    _source = lambda: current[0]  # noqa: E731

    def advance(delta: timedelta) -> None:
        current[0] = current[0] + delta

    try:
        yield advance
    finally:
        _source = previous


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def billing_day(tz: str, at: datetime | None = None) -> date:
    """The billing date (local calendar date in `tz`) at `at` (default: now)."""
    return (at or now()).astimezone(_zone(tz)).date()


def day_start(tz: str, at: datetime | None = None) -> datetime:
    """The UTC instant of the local midnight that began the billing day of `at`."""
    local = (at or now()).astimezone(_zone(tz))
    return datetime.combine(local.date(), time(0), tzinfo=_zone(tz)).astimezone(UTC)


def next_reset(tz: str, at: datetime | None = None) -> datetime:
    """The UTC instant of the next local midnight in `tz` after `at`."""
    local = (at or now()).astimezone(_zone(tz))
    tomorrow = local.date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(0), tzinfo=_zone(tz)).astimezone(UTC)
