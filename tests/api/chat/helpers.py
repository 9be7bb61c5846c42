"""Helpers for the chat tests: the app served over a real socket (lifespan on), SDK clients, and
the ledger's books read straight from the database."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
from sqlalchemy import Engine, text

from common import billing, clock, ledger
from common.settings import Settings
from tests.conftest import TEST_TZ, TestAccount, create_test_account
from tests.fakes.server import serve

FAKE_PROVIDER_KEY = "sk-fake-provider-key-0123456789"  # what the gateway sends to a fake upstream


@contextmanager
def serve_app(app: Any, *, startup_timeout: float = 10.0) -> Iterator[str]:
    """Serve the Helyx app with uvicorn on 127.0.0.1 (a free port), lifespan included, for the
    block; yields its root URL."""
    with serve(app, startup_timeout=startup_timeout, lifespan="on", backlog=512, name="helyx") as url:
        yield url


@dataclass
class Gateway:
    """One running Helyx app: its settings, engine and URL."""

    settings: Settings
    engine: Engine
    url: str  # root, e.g. http://127.0.0.1:PORT
    app: Any = None  # the app object it serves (its services), when started in this process

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    def account(self, plan: str = "free") -> TestAccount:
        return create_test_account(self.engine, plan)

    def sdk(self, key: TestAccount | str, *, max_retries: int = 0, timeout: float = 15.0) -> openai.OpenAI:
        api_key = key.api_key if isinstance(key, TestAccount) else key
        http_client = openai.DefaultHttpx2Client(verify=False)  # plain http on 127.0.0.1: no certificates to load
        return openai.OpenAI(base_url=self.api, api_key=api_key, max_retries=max_retries, timeout=timeout,
                             http_client=http_client)

    def http(self, key: TestAccount | str | None = None, timeout: float = 15.0) -> httpx.Client:
        headers = {}
        if key is not None:
            headers["Authorization"] = f"Bearer {key.api_key if isinstance(key, TestAccount) else key}"
        return httpx.Client(base_url=self.api, headers=headers, timeout=timeout, trust_env=False,
                            verify=False)  # plain http on 127.0.0.1: no certificate store to load


GatewayFactory = Callable[..., Gateway]  # the make_gateway fixture: make_gateway(**settings)


# --- the books ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Books:
    """An account as the database holds it."""

    allowance: int
    topup: int
    held: int
    entries_sum: int
    entries_held_sum: int
    entries: int
    open_holds: int
    open_held: int

    @property
    def balance(self) -> int:
        return self.allowance + self.topup

    @property
    def available(self) -> int:
        return self.balance - self.held


def books(engine: Engine, account_id: str) -> Books:
    """One account's books, read in one snapshot (on PostgreSQL, a REPEATABLE READ transaction:
    each statement of a READ COMMITTED one sees what committed before it, and a write landing
    between the three would break the invariants they are checked for)."""
    options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
    with engine.connect().execution_options(**options) as conn:
        allowance, topup, held = conn.execute(
            text("SELECT allowance, topup, held FROM accounts WHERE id = :a"), {"a": account_id}).one()
        total, held_total, count = conn.execute(
            text("SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(held_delta), 0), COUNT(*) FROM ledger_entries"
                 " WHERE account_id = :a"), {"a": account_id}).one()
        opened, open_sum = conn.execute(
            text("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM holds WHERE account_id = :a AND status = 'open'"),
            {"a": account_id}).one()
    return Books(int(allowance), int(topup), int(held), int(total), int(held_total), int(count), int(opened),
                 int(open_sum))


def assert_books_balance(engine: Engine, account_id: str, *, open_holds: int | tuple[int, ...] = 0) -> Books:
    """The ledger's invariants for one account, and how many holds may still be open (a count,
    or the counts any of which may be)."""
    b = books(engine, account_id)
    assert b.entries_sum == b.balance, b
    assert b.entries_held_sum == b.held == b.open_held, b
    assert b.available >= 0 and b.allowance >= 0 and b.topup >= 0, b
    assert b.open_holds in ((open_holds,) if isinstance(open_holds, int) else open_holds), b
    return b


def holds(engine: Engine, account_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM holds WHERE account_id = :a ORDER BY created_at"),
                            {"a": account_id}).mappings().all()
    return [dict(r) for r in rows]


def hold_for(engine: Engine, generation_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM holds WHERE purpose = :p"), {"p": f"chat:{generation_id}"}).mappings()
        found = row.one()
    return dict(found)


def generation_row(engine: Engine, generation_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM generations WHERE id = :g"), {"g": generation_id}).mappings().first()
    return dict(row) if row else None


def spend(engine: Engine, account_id: str, micro: int) -> None:
    """Use up `micro` micro-credits through the ledger (a hold settled in full), as a call would."""
    hold = billing.reserve(engine, account_id=account_id, key_id=None, amount=micro, purpose="test:spend",
                           ttl=60, tz=TEST_TZ)
    billing.settle(engine, hold, micro, description="test spend")


def leave_available(engine: Engine, account_id: str, micro: int) -> None:
    """Spend until exactly `micro` micro-credits are available."""
    current = books(engine, account_id).available
    assert current > micro
    spend(engine, account_id, current - micro)
    assert books(engine, account_id).available == micro


def grant(engine: Engine, account_id: str, micro: int) -> None:
    """Add `micro` top-up micro-credits through the ledger."""
    with engine.begin() as conn:
        ledger.grant(conn, account_id, micro, now=clock.now().timestamp())


def catalog_file(tmp_path: Path, body: str, name: str = "catalog.toml") -> Path:
    path = tmp_path / name
    path.write_text(body, "utf-8")
    return path


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; returns that value (or fails)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class Records(logging.Handler):
    """Every record a logger emits (the request_log fixture: `helyx.request`'s lines)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
