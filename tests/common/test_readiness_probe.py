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
    monkeypatch.setattr(health, "RECENT_SECONDS", 2.0)  # (a thread the machine starts late still shares it)
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
    threading.Event().wait(2.1)
    assert health._database(pg_engine) == "ok" and len(opened) == 2  # an answer is shared for a moment only


def test_a_burst_of_scrapes_reads_the_database_once(pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each scrape ran its own full scan, one after the other, each holding one of the API's
    threads meanwhile (a diff review: 100 scrapes at once kept /readyz waiting 5.6 s)."""
    from common import metrics
    from common.db import METRICS_STATEMENT_MS

    monkeypatch.setattr(metrics, "RECENT_SECONDS", 2.0)
    collector = metrics.DatabaseCollector(pg_engine)
    opened: list[int] = []
    event.listen(probe(pg_engine, METRICS_STATEMENT_MS), "connect", lambda *_: opened.append(1))
    start = threading.Barrier(10)
    names: list[set[str]] = []

    def scrape() -> None:
        start.wait()
        names.append({family.name for family in collector.collect()})

    threads = [threading.Thread(target=scrape) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(names) == 10 and all("helyx_open_holds" in n for n in names) and len(opened) == 1
    threading.Event().wait(2.1)
    list(collector.collect())
    assert len(opened) == 2
