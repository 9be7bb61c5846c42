"""Shared fixtures: settings on a temporary SQLite file, real PostgreSQL and Redis (skipped locally
when absent, failing under CI=true), the app with a TestClient, and account helpers."""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, event, text

from common import accounts, billing, clock
from common.db import make_engine, normalize_url
from common.migrate import upgrade
from common.settings import Settings
from common.throttled_log import ThrottledWarnings

T = TypeVar("T")

pytest_plugins = ["tests.fakes.fixtures"]

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("HELYX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _zone_near_noon() -> str:
    """A fixed-offset zone whose local time is about noon as the tests start.

    The billing day of the tests' accounts and gateways is that zone's date, so no daily reset can
    refill an allowance in the middle of a test that counts what the balance affords (CI once ran
    a 50-affordable burst across Karachi's midnight, 19:00 UTC, and 108 calls went through).
    Tests of the reset itself freeze the clock and name their zone."""
    offset = 12 - datetime.now(UTC).hour  # -11 .. +12 hours, all valid Etc/GMT zones
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"  # POSIX sign: Etc/GMT-5 is UTC+5


TEST_TZ = _zone_near_noon()


def _redis_urls() -> tuple[str, str]:
    """This pytest process's two Redis databases: the suite's and the fault tests' (faults.py),
    each flushed by the tests. Under pytest-xdist every worker has its own pair, so that no
    worker's Dramatiq processes take another's messages: 14 and 13 for the first (and for a run
    without xdist), 12 and 11 for the next, and so on down (HELYX_TEST_REDIS_URL moves the first
    database; the others follow it down; seven workers at most from db 14)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(os.environ.get("HELYX_TEST_REDIS_URL", "redis://127.0.0.1:6379/14"))
    first = int(parts.path.strip("/") or 0)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    suite_db, faults_db = first - 2 * index, first - 2 * index - 1
    if faults_db < 0:
        raise RuntimeError(f"pytest-xdist worker {index} has no Redis databases left below db {first}: "
                           "run fewer workers (HELYX_TEST_WORKERS)")
    return (urlunsplit(parts._replace(path=f"/{suite_db}")), urlunsplit(parts._replace(path=f"/{faults_db}")))


REDIS_TEST_URL, FAULTS_REDIS_URL = _redis_urls()
ADMIN_TOKEN = "test-admin-token-0123456789"


class _LimiterClock:
    """The clock of the in-process rate limiter (`limits`' MemoryStorage, used by every gateway
    without Redis). Its sliding-window counters are aligned on the wall clock's minutes, and at
    hh:mm:00 the weighted count drops by one (floor(previous * (60 - e) / 60) = previous - 1), so a
    test whose burst straddled a minute saw limit + 1 requests pass. Each test starts one second
    into a fresh minute of this clock, which then follows real time: 59 s of headroom, whatever the
    wall clock says. It only ever moves forward (an app kept across tests sees time pass)."""

    def __init__(self) -> None:
        self.source = time.time
        self.offset = 0.0

    def time(self) -> float:
        return self.source() + self.offset

    def start_of_a_minute(self) -> None:
        now = self.time()
        self.offset += (math.floor(now / 60) + 1) * 60 + 1 - now  # hh:mm:01 of the next minute


LIMITER_CLOCK = _LimiterClock()


@pytest.fixture(autouse=True)
def rate_limit_windows_start_with_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    from limits.aio.storage import memory

    monkeypatch.setattr(memory, "time", LIMITER_CLOCK)
    LIMITER_CLOCK.start_of_a_minute()


@pytest.fixture(autouse=True)
def every_warning_logged_afresh() -> None:
    """Warnings of one cause are logged at most once per 10 s (common.throttled_log): each test
    expects its own."""
    ThrottledWarnings.forget_all()


@pytest.fixture(autouse=True)
def database_figures_read_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """/readyz and /metrics share one read of the database for a second (common.health,
    common.metrics): a test that changes the database and reads again expects the change. The
    tests of that sharing set their own interval."""
    from common import health, metrics

    monkeypatch.setattr(health, "RECENT_SECONDS", 0.0)
    monkeypatch.setattr(metrics, "RECENT_SECONDS", 0.0)


def service_unavailable(what: str, exc: Exception) -> None:
    """Dramatiq's rule: a missing service skips locally but fails in CI."""
    if CI:
        raise RuntimeError(f"{what} is required in CI but unreachable: {exc}") from exc
    pytest.skip(f"{what} unreachable: {exc}")


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path / 'helyx.db'}",
        "storage_dir": tmp_path / "files",
        "admin_token": ADMIN_TOKEN,
        "simulated_job_seconds": 0.0,
        "upstream_backoff_seconds": 0.01,
    }
    if "HELYX_TIMEZONE" not in os.environ:  # a test that sets it means it
        values["timezone"] = TEST_TZ
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type, call-arg]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database, migrated, dropped afterwards (also while its sessions last)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        # pre-ping: the fault tests restart PostgreSQL; the final DROP must not use a dead connection
        admin = create_engine(normalize_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        service_unavailable("PostgreSQL", exc)
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated."""
    with fresh_pg_database("helyx_test") as url:
        yield url


def emptied_pg_engine(pg_url: str, pool_size: int) -> Engine:
    """An engine on the session's database, every table of it emptied. For tests that start worker
    processes on it too: their sweeper runs any stale queued job it finds, an earlier test's
    included (one ran against the hang test's fake and made its call count 2)."""
    engine = make_engine(pg_url, pool_size=pool_size)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE accounts, api_keys, holds, ledger_entries, generations, jobs, files CASCADE"))
    return engine


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = emptied_pg_engine(pg_url, pool_size=40)
    yield engine
    engine.dispose()


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        service_unavailable("Redis", exc)
    return REDIS_TEST_URL


@dataclass
class TestAccount:
    __test__ = False
    account_id: str
    key_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def create_test_account(engine: Engine, plan: str = "free", tz: str = TEST_TZ) -> TestAccount:
    with engine.begin() as conn:
        account_id, key = accounts.create_account(
            conn, f"{uuid.uuid4().hex[:12]}@example.com", plan, day=billing.today(tz), now=clock.now().timestamp()
        )
    return TestAccount(account_id, key.id, key.secret)


@pytest.fixture
def app_client(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def account(engine: Engine) -> TestAccount:
    return create_test_account(engine, "free")


@contextlib.contextmanager
def statements_sent(engine: Engine) -> Iterator[list[str]]:
    """Every statement sent through `engine` (SQLAlchemy's own, not common.pg_statements') while
    the block runs."""
    with _sent(engine, lambda statement, _parameters: statement) as seen:
        yield seen


@contextlib.contextmanager
def statements_and_parameters_sent(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """As statements_sent, each with its parameters, as the driver got them."""
    with _sent(engine, lambda statement, parameters: (statement, parameters)) as seen:
        yield seen


@contextlib.contextmanager
def _sent(engine: Engine, entry: Callable[[str, Any], T]) -> Iterator[list[T]]:
    seen: list[T] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append(entry(statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
