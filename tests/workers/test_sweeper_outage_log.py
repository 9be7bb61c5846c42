"""The workers' sweeper while the database is down: one warning line per sweep, not an ERROR with
a traceback every 5 s for as long as the outage lasts (a diff review; the API's hold sweep had
the same fix)."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from workers import sweeper


@pytest.mark.parametrize(("error", "outage"), [
    (psycopg.OperationalError("connection refused"), True),
    (OperationalError("UPDATE jobs", {}, psycopg.errors.DeadlockDetected("deadlock detected")), False),
], ids=["outage", "deadlock"])
def test_a_sweep_during_an_outage_logs_one_line_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception, outage: bool) -> None:
    """...and a statement's own failure on a reachable server (a deadlock) keeps its traceback."""
    calls: list[int] = []

    def down(*_args: Any, **_kwargs: Any) -> None:
        calls.append(1)
        if len(calls) > 3:
            raise SystemExit  # ends the sweeper's thread (it catches Exception only)
        raise error

    monkeypatch.setattr(sweeper, "sweep_once", down)
    monkeypatch.setattr(threading, "excepthook", lambda _args: None)  # the SystemExit that ends it is ours
    monkeypatch.setattr(sweeper.context, "settings", lambda: SimpleNamespace(sweep_interval_seconds=0.01))
    with caplog.at_level(logging.WARNING, logger=sweeper.log.name):
        sweeper.start(lambda job_id, job_type: None).join(10)
    lines = [r for r in caplog.records if "sweep" in r.getMessage()]
    assert len(lines) == 3, lines
    if outage:
        assert all(r.levelno == logging.WARNING and r.exc_info is None for r in lines), lines
        assert "database is unavailable (OperationalError)" in lines[0].getMessage()
    else:
        assert all(r.levelno == logging.ERROR and r.exc_info for r in lines), lines
