"""Fixtures for the worker tests: the StubBroker consumed by a dramatiq.Worker in this process,
the actors pointed at the test's SQLite settings, and no real provider key in sight."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from sqlalchemy import Engine

from common.catalog import load_catalog
from common.db import get_engine
from common.migrate import upgrade
from tests.conftest import emptied_pg_engine, make_settings
from tests.workers.helpers import Jobs, start_worker, stop_worker

JOB_DEFAULTS: dict[str, Any] = {
    "simulated_job_seconds": 0.0, "job_max_retries": 2, "job_retry_backoff_ms": 10, "job_lease_seconds": 2.0,
    "rate_limit_free": 10_000, "rate_limit_plus": 10_000, "rate_limit_pro": 10_000, "rate_limit_ultra": 10_000,
}


@pytest.fixture(autouse=True)
def _no_real_provider_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never call a real vendor: every key the built-in catalog names is unset for the test."""
    for provider in load_catalog(make_settings(tmp_path)).providers.values():
        if provider.api_key_env:
            monkeypatch.delenv(provider.api_key_env, raising=False)


@pytest.fixture
def make_jobs(tmp_path: Path) -> Iterator[Callable[..., Jobs]]:
    """`make_jobs(threads=4, **settings)`: the job settings, migrated, and a worker consuming."""
    workers: list[dramatiq.Worker] = []

    def make(threads: int = 4, **overrides: Any) -> Jobs:
        assert not workers, "one worker per test"
        settings = make_settings(tmp_path, **{**JOB_DEFAULTS, **overrides})
        engine = get_engine(settings.database_url)
        upgrade(engine)
        workers.append(start_worker(settings, threads))
        return Jobs(settings, engine)

    yield make
    for worker in workers:
        stop_worker(worker)


@pytest.fixture
def one(pg_url: str) -> Iterator[Engine]:
    """An engine (on PostgreSQL) whose pg_statements pool has ONE connection: every claim and
    success uses the same one, and the next user gets it."""
    engine = emptied_pg_engine(pg_url, pool_size=1)
    yield engine
    engine.dispose()
