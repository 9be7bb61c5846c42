"""The API's hold sweep while the database is down: one warning line per sweep, not an ERROR with
a traceback every ~35 s for as long as the outage lasts (an operator review)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from api import app as app_module


@pytest.mark.anyio
@pytest.mark.parametrize(("error", "outage"), [
    (psycopg.OperationalError("connection refused"), True),
    (OperationalError("UPDATE holds", {}, psycopg.errors.DeadlockDetected("deadlock detected")), False),
], ids=["outage", "deadlock"])
async def test_a_sweep_during_an_outage_logs_one_line_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception, outage: bool) -> None:
    """...and a statement's own failure on a reachable server (a deadlock) keeps its traceback."""
    calls: list[int] = []

    def down(engine: Any) -> None:
        calls.append(1)
        raise error

    monkeypatch.setattr(app_module.billing, "expire_holds", down)
    services = SimpleNamespace(settings=SimpleNamespace(hold_sweep_interval_seconds=0.01), engine=None)
    with caplog.at_level(logging.WARNING, logger="helyx.api"):
        sweeping = asyncio.create_task(app_module._sweep_holds(services))  # type: ignore[arg-type]
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        sweeping.cancel()
    lines = [r for r in caplog.records if "hold sweep" in r.getMessage()]
    if outage:
        assert lines and all(r.levelno == logging.WARNING and r.exc_info is None for r in lines), lines
        assert "database is unavailable (OperationalError)" in lines[0].getMessage()
    else:
        assert lines and all(r.levelno == logging.ERROR and r.exc_info for r in lines), lines


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
