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

from workers import sweeper


def test_a_sweep_during_an_outage_logs_one_line_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def down(*_args: Any, **_kwargs: Any) -> None:
        calls.append(1)
        if len(calls) > 3:
            raise SystemExit  # ends the sweeper's thread (it catches Exception only)
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(sweeper, "sweep_once", down)
    monkeypatch.setattr(threading, "excepthook", lambda _args: None)  # the SystemExit that ends it is ours
    monkeypatch.setattr(sweeper.context, "settings", lambda: SimpleNamespace(sweep_interval_seconds=0.01))
    with caplog.at_level(logging.WARNING, logger=sweeper.log.name):
        sweeper.start(lambda job_id, job_type: None).join(10)
    lines = [r for r in caplog.records if "sweep" in r.getMessage()]
    assert len(lines) == 3 and all(r.levelno == logging.WARNING and r.exc_info is None for r in lines), lines
    assert "database is unavailable (OperationalError)" in lines[0].getMessage()
