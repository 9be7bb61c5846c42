"""Fixtures for the chat path: a Helyx app per test served over a real socket, the vendors' fake
upstreams (one server per module, fresh knobs per test), and no real provider key in sight."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from common.catalog import load_catalog
from common.db import get_engine, make_engine
from common.migrate import upgrade
from tests.api.chat.helpers import FAKE_PROVIDER_KEY, Gateway, GatewayFactory, Records, serve_app
from tests.conftest import make_settings
from tests.fakes import FakeUpstream

# Generous unless a test is about rate limits, so a test's own requests never trip them.
_DEFAULTS: dict[str, Any] = {"rate_limit_free": 10_000, "rate_limit_plus": 10_000,
                             "rate_limit_pro": 10_000, "rate_limit_ultra": 10_000}


@pytest.fixture(autouse=True)
def _no_real_provider_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never call a real vendor: every key the built-in catalog names is unset for the test."""
    for provider in load_catalog(make_settings(tmp_path)).providers.values():
        if provider.api_key_env:
            monkeypatch.delenv(provider.api_key_env, raising=False)


@pytest.fixture(scope="session")
def _migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, made once; each test starts from a copy of it."""
    settings = make_settings(tmp_path_factory.mktemp("chat-template"))
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    return Path(settings.database_url.removeprefix("sqlite:///"))


@pytest.fixture
def make_gateway(tmp_path: Path, _migrated_sqlite: Path) -> Iterator[GatewayFactory]:
    """`make_gateway(**settings)` starts a Helyx app (lifespan on) on 127.0.0.1. Gateways of one
    test share its SQLite database unless `database_url` says otherwise."""
    with ExitStack() as stack:
        engines = []

        def make(**overrides: Any) -> Gateway:
            settings = make_settings(tmp_path, **{**_DEFAULTS, **overrides})
            database = Path(settings.database_url.removeprefix("sqlite:///"))
            if settings.is_sqlite and not database.exists():
                shutil.copyfile(_migrated_sqlite, database)
            engine = get_engine(settings.database_url)  # the app's own engine (one per URL and process)
            if not settings.is_sqlite:
                upgrade(engine)
            engines.append(engine)
            from api.app import create_app

            app = create_app(settings)
            url = stack.enter_context(serve_app(app))
            return Gateway(settings, engine, url, app)

        yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> dict[str, str]:
    """Gateway settings for each database, for the tests of money paths that differ between them
    (on PostgreSQL the key lookup, reserve and settle run on the event loop: common.pg_async)."""
    return {"database_url": request.getfixturevalue("pg_url")} if request.param == "postgres" else {}


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> Gateway:
    """The self-contained gateway: SQLite, every chat model simulated."""
    return make_gateway()




PROVIDER_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}


@pytest.fixture
def upstream_gateway(make_gateway: GatewayFactory, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> Callable[..., Gateway]:
    """`upstream_gateway(openai=fake, anthropic=fake, ..., **settings)`: a gateway whose named
    providers point at the fakes (HELYX_CATALOG extends the built-in one) with their keys set."""

    def make(**kwargs: Any) -> Gateway:
        toml = []
        for provider, env in PROVIDER_KEYS.items():
            fake = kwargs.pop(provider, None)
            if fake is not None:
                toml.append(f'[providers.{provider}]\nbase_url = "{fake.base_url}"\n')
                monkeypatch.setenv(env, FAKE_PROVIDER_KEY)
        path = tmp_path / "catalog.toml"
        path.write_text("\n".join(toml), "utf-8")
        return make_gateway(catalog=path, **kwargs)

    return make


@pytest.fixture
def gw(upstream_gateway: Callable[..., Gateway], openai_fake: FakeUpstream, database: dict[str, str]) -> Gateway:
    """The gateway in front of the fake OpenAI upstream, two quick retries, on each database (a
    module may define its own `gw`)."""
    return upstream_gateway(openai=openai_fake, upstream_retries=2, upstream_backoff_seconds=0.01, **database)


@pytest.fixture
def request_log() -> Iterator[Records]:
    """The request log lines (`helyx.request`) emitted during the test."""
    handler, logger = Records(), logging.getLogger("helyx.request")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
