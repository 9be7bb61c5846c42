"""Reads that run often, or that any key holder can ask for, are served by an index bounded by
what they look for, not by a walk through the tables' whole history (a scale review: on a
database of 300,000 jobs and 3 million ledger entries, the webhook sweep read every job every few
seconds, and a usage page with `until` walked every account's entries).

Each plan is asked for with table scans discouraged: on the tests' few rows a scan is the cheaper
plan, and what is checked is that the index can serve the statement (a partial index only serves
a query whose terms imply its own). A usage page's plan is not checked here: on a few rows
PostgreSQL reads them through the account's index and sorts them, however the page is ordered;
its order by time, which lets a large ledger's plan stop at the page, is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text

from common import clock, ledger, reports
from common.errors import NotFound
from common.jobs import recovery
from common.jobs.views import list_jobs
from tests.conftest import TEST_TZ, TestAccount, create_test_account, statements_and_parameters_sent

ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _engine(db: str, request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue("engine" if db == "sqlite" else "pg_engine")


def _insert_jobs(engine: Engine, account: TestAccount, count: int) -> None:
    """Jobs job_00, job_01, ... made two at a time (pairs share their created_at)."""
    with engine.begin() as conn:
        for i in range(count):
            conn.execute(text(
                "INSERT INTO jobs (id, account_id, key_id, type, model, params, status, price, charged, created_at,"
                " enqueued_at, attempts, progress, hold_id) VALUES (:id, :aid, :kid, 'image', 'nano-banana-pro', '{}',"
                " 'queued', 1, 0, :t, :t, 0, 0, 'hold_none')"),
                {"id": f"job_{i:02d}", "aid": account.account_id, "kid": account.key_id, "t": 100.0 + i // 2})


def _statements_of(engine: Engine, call: Callable[[], object]) -> list[tuple[str, Any]]:
    with statements_and_parameters_sent(engine) as seen:
        call()
    return seen


def _driver_plan(engine: Engine, statement: str, parameters: Any) -> str:
    """The plan of a statement as the driver got it (its placeholders and parameters)."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            return str(conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all())
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        return "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))


@pytest.mark.postgres
def test_the_sweepers_look_for_unsent_webhooks_reads_its_partial_index(pg_engine: Engine) -> None:
    """(On SQLite, the self-contained mode's, the planner keeps to the status index.)"""
    ran = _statements_of(pg_engine, lambda: recovery.unsent_webhooks(pg_engine, 30.0, 600.0, take=False))
    statement, parameters = next((s, p) for s, p in ran if "webhook_url IS NOT NULL" in s)
    plan = _driver_plan(pg_engine, statement, parameters)
    assert "ix_jobs_webhook_unsent" in plan, plan


@pytest.mark.parametrize("db", ENGINES)
def test_the_admin_account_list_reads_accounts_in_order_of_creation(db: str, request: pytest.FixtureRequest) -> None:
    engine = _engine(db, request)
    first = create_test_account(engine, "plus")
    ran = _statements_of(engine, lambda: reports.list_accounts(engine, TEST_TZ, limit=10, after=first.account_id))
    statement, parameters = next((s, p) for s, p in ran if "ORDER BY created_at, id" in s)
    assert "ix_accounts_created" in _driver_plan(engine, statement, parameters)


@pytest.mark.postgres
def test_a_page_of_jobs_after_a_cursor_is_bounded_by_the_index_not_filtered(pg_engine: Engine) -> None:
    """As an OR, the cursor's condition filtered every job of the account newer than it, so a
    walk through an account's jobs grew with the square of their number."""
    account = create_test_account(pg_engine, "plus")
    _insert_jobs(pg_engine, account, 2)
    ran = _statements_of(pg_engine, lambda: list_jobs(pg_engine, account.account_id, job_type=None, limit=1,
                                                      after="job_01"))
    statement, parameters = next((s, p) for s, p in ran if "ORDER BY created_at" in s)
    plan = _driver_plan(pg_engine, statement, parameters)
    assert any("created_at" in line for line in plan.splitlines() if "Index Cond" in line), plan


@pytest.mark.parametrize("db", ENGINES)
def test_usage_with_until_pages_by_time_through_every_entry_once_ties_included(
        db: str, request: pytest.FixtureRequest) -> None:
    """Newest first by time, ties (one transaction's entries share its time) by id; `after`
    continues from the entry it names, which must be one of the account's."""
    engine = _engine(db, request)
    account = create_test_account(engine, "plus")
    other = create_test_account(engine, "plus")
    base = clock.now().timestamp()
    with engine.begin() as conn:
        for i in (3, 0, 6, 1, 5, 2, 4):  # three entries at each of 7 times, written out of time order
            for j in range(3):
                ledger.grant(conn, account.account_id, 1_000_000 * (i + 1), now=base + i, reference=f"g{i}-{j}")
        ledger.grant(conn, other.account_id, 5_000_000, now=base + 3.5, reference="theirs")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, created_at FROM ledger_entries WHERE account_id = :aid"),
                            {"aid": account.account_id}).all()
    expected = [r.id for r in sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True) if r.created_at < base + 5]
    by_id = sorted((r.id for r in rows), reverse=True)
    assert len(expected) == 1 + 5 * 3  # the account's first entry (its allowance's reset), the grants before until
    assert expected != [i for i in by_id if i in expected]  # time order is not id order here

    seen: list[int] = []
    after = None
    for _ in range(10):
        page = reports.list_usage(engine, account.account_id, until=base + 5, limit=4, after=after)
        seen += [entry["id"] for entry in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_cursor"]
    assert seen == expected

    theirs = reports.list_usage(engine, other.account_id, limit=1)["data"][0]["id"]
    with pytest.raises(NotFound) as refused:
        reports.list_usage(engine, account.account_id, until=base + 5, after=theirs)
    assert (refused.value.code, refused.value.param) == ("usage_entry_not_found", "after")
    # without `until`, pages stay in id order and the cursor an id bound: the export walk is unchanged
    page = reports.list_usage(engine, account.account_id, after=by_id[2], limit=100)
    assert [entry["id"] for entry in page["data"]] == by_id[3:]


@pytest.mark.parametrize("db", ENGINES)
def test_a_page_of_jobs_after_a_cursor_still_takes_ties_by_id(db: str, request: pytest.FixtureRequest) -> None:
    engine = _engine(db, request)
    account = create_test_account(engine, "plus")
    _insert_jobs(engine, account, 6)
    for order, expected in (("desc", [f"job_{i:02d}" for i in range(5, -1, -1)]),
                            ("asc", [f"job_{i:02d}" for i in range(6)])):
        seen: list[str] = []
        after = None
        while True:
            records, more = list_jobs(engine, account.account_id, job_type=None, limit=1, after=after, order=order)
            seen += [r.row["id"] for r in records]
            if not more:
                break
            after = seen[-1]
        assert seen == expected, order
