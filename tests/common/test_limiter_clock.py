"""The in-process rate limiter's minute windows start with each test (tests/conftest.LIMITER_CLOCK):
a burst never straddles a window boundary, whatever the wall clock says."""

from __future__ import annotations


def test_a_test_starts_one_second_into_a_fresh_minute_of_the_limiters_clock() -> None:
    from limits.aio.storage import memory

    assert 1.0 <= memory.time.time() % 60 < 30.0  # set up a moment ago: 59 s of headroom left
