"""How often a waiting image request reads its job row (api.job_flow.next_poll_delay)."""

from __future__ import annotations

import pytest

from api.job_flow import next_poll_delay


def reads_until(seconds: float) -> tuple[int, list[float]]:
    delays, waited = [], 0.0
    while waited < seconds:
        delays.append(next_poll_delay(delays[-1] if delays else 0.0, waited))
        waited += delays[-1]
    return len(delays), delays


def test_a_fast_job_is_read_again_within_milliseconds() -> None:
    _, delays = reads_until(0.5)
    assert delays[:6] == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.08, 0.1])


def test_a_minute_long_wait_reads_the_row_about_a_hundred_times_and_waits_at_most_five_percent_more() -> None:
    reads, delays = reads_until(60)
    assert 90 <= reads <= 130  # at a steady 100 ms it was 600
    waited = 0.0
    for delay in delays:
        assert delay <= max(0.1, waited / 20) + 1e-9 and delay <= 1.0
        waited += delay
