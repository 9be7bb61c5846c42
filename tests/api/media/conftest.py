"""Fixtures for the media routes: the app in a TestClient (lifespan on) with a dramatiq.Worker on
the StubBroker consuming its jobs in this process, both on the test's SQLite settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from common.catalog import load_catalog
from common.db import get_engine
from common.migrate import upgrade
from common.settings import Settings
from tests.api.chat.helpers import serve_app
from tests.conftest import TestAccount, make_settings
from tests.workers.helpers import Jobs, start_worker, stop_worker

MEDIA_DEFAULTS: dict[str, Any] = {
    "simulated_job_seconds": 0.0, "job_max_retries": 1, "job_retry_backoff_ms": 10, "job_lease_seconds": 2.0,
    "image_wait_seconds": 20.0,
    "rate_limit_free": 10_000, "rate_limit_plus": 10_000, "rate_limit_pro": 10_000, "rate_limit_ultra": 10_000,
}


@dataclass
class Media:
    client: TestClient
    jobs: Jobs

    @property
    def settings(self) -> Settings:
        return self.jobs.settings

    @property
    def engine(self) -> Engine:
        return self.jobs.engine

    def account(self, plan: str = "free") -> TestAccount:
        return self.jobs.account(plan)

    def counts(self, account: TestAccount) -> tuple[int, int, int]:
        """(jobs, holds, ledger entries) of the account."""
        with self.engine.connect() as conn:
            return tuple(  # type: ignore[return-value]
                int(conn.execute(text(f"SELECT COUNT(*) FROM {table} WHERE account_id = :a"),
                                 {"a": account.account_id}).scalar_one())
                for table in ("jobs", "holds", "ledger_entries"))


@pytest.fixture(autouse=True)
def _no_real_provider_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for provider in load_catalog(make_settings(tmp_path)).providers.values():
        if provider.api_key_env:
            monkeypatch.delenv(provider.api_key_env, raising=False)


@pytest.fixture
def make_media(tmp_path: Path) -> Iterator[Callable[..., Media]]:
    """`make_media(**settings)`: the app and a worker on the same settings (one per test)."""
    started: list[tuple[TestClient, dramatiq.Worker]] = []

    def make(**overrides: Any) -> Media:
        assert not started, "one app per test"
        settings = make_settings(tmp_path, **{**MEDIA_DEFAULTS, **overrides})
        engine = get_engine(settings.database_url)
        upgrade(engine)
        from api.app import create_app

        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        started.append((client, start_worker(settings)))
        return Media(client, Jobs(settings, engine))

    yield make
    for client, worker in started:
        client.__exit__(None, None, None)
        stop_worker(worker)


@pytest.fixture
def media(make_media: Callable[..., Media]) -> Media:
    return make_media()


@dataclass
class Served:
    """The app served by uvicorn on 127.0.0.1 (for the official SDK), with a worker consuming its jobs."""

    url: str
    engine: Engine

    def sdk(self, account: TestAccount, max_retries: int = 0) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/api/v1", api_key=account.api_key, max_retries=max_retries,
                             timeout=30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    settings = make_settings(tmp_path, **{**MEDIA_DEFAULTS, "simulated_job_seconds": 0.3})
    engine = get_engine(settings.database_url)
    upgrade(engine)
    from api.app import create_app

    worker = start_worker(settings)
    try:
        with serve_app(create_app(settings)) as url:
            yield Served(url, engine)
    finally:
        stop_worker(worker)
