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


def _wait_through(readings: list[object], timeout: float, monkeypatch: pytest.MonkeyPatch) -> tuple[object, int]:
    """api.job_flow.wait_for over `readings`: a dict is a job row read, an exception is raised."""
    import asyncio
    from types import SimpleNamespace
    from typing import Any

    from api import job_flow

    calls: list[int] = []

    async def read(*args: Any, **kwargs: Any) -> Any:
        reading = readings[min(len(calls), len(readings) - 1)]
        calls.append(1)
        if isinstance(reading, Exception):
            raise reading
        return SimpleNamespace(row=reading), 7

    monkeypatch.setattr(job_flow, "read", read)
    record, remaining = asyncio.run(job_flow.wait_for(None, None, "job_x", timeout))  # type: ignore[arg-type]
    assert remaining == 7
    return record.row, len(calls)  # type: ignore[attr-defined]


def test_a_database_outage_to_the_end_of_the_wait_answers_the_last_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    lost = psycopg.OperationalError("server closed the connection unexpectedly")
    row, reads = _wait_through([{"status": "running"}, lost], 0.3, monkeypatch)
    assert row == {"status": "running"} and reads > 2  # read again meanwhile, then the job as last seen


def test_a_blip_is_read_through_to_the_jobs_end(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    lost = psycopg.OperationalError("server closed the connection unexpectedly")
    row, _ = _wait_through([lost, lost, {"status": "succeeded"}], 5.0, monkeypatch)
    assert row == {"status": "succeeded"}


def test_an_outage_with_no_reading_at_all_is_the_databases_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    with pytest.raises(psycopg.OperationalError):
        _wait_through([psycopg.OperationalError("connection refused")], 0.2, monkeypatch)


def test_another_failure_is_not_read_through(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeyError):
        _wait_through([{"status": "running"}, KeyError("status")], 5.0, monkeypatch)
