"""The readiness check's database probe opens a connection of its own on PostgreSQL (so that a
stalled pool cannot hang it); /readyz needs no key, so many clients at once share one probe and
its answer for a second, rather than open a connection each (a diff review: 45 clients opened 23)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Engine, event

from common import health
from common.db import READY_STATEMENT_MS, probe

pytestmark = pytest.mark.postgres


def test_many_checks_at_once_open_one_connection_and_share_its_answer(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "RECENT_SECONDS", 0.5)
    opened: list[int] = []
    event.listen(probe(pg_engine, READY_STATEMENT_MS), "connect", lambda *_: opened.append(1))
    answers: list[str] = []
    start = threading.Barrier(20)

    def ask() -> Any:
        start.wait()
        answers.append(health._database(pg_engine))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == ["ok"] * 20 and len(opened) == 1
    threading.Event().wait(0.6)
    assert health._database(pg_engine) == "ok" and len(opened) == 2  # an answer is shared for a moment only
