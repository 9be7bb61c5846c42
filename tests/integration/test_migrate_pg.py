"""Migrations on PostgreSQL (common.migrate): serve, worker and migrate take turns under an advisory
lock, which a failing migration must not keep."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from common.db import make_engine
from common.migrate import _LOCK_ID, SchemaNewerThanRelease, upgrade
from tests.conftest import fresh_pg_database

pytestmark = pytest.mark.postgres


def _advisory_locks_held(url: str) -> int:
    probe = make_engine(url)
    try:
        with probe.connect() as conn:
            return int(conn.execute(text(  # this database's only: other tests migrate theirs meanwhile
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :id"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                {"id": _LOCK_ID & 0xFFFFFFFF}).scalar_one())
    finally:
        probe.dispose()


def test_a_failing_migration_raises_its_own_error_and_lets_the_lock_go() -> None:
    """The unlock ran inside the aborted transaction: InFailedSqlTransaction hid the migration's
    error, and the lock stayed held by the pooled connection (every later start waited on it)."""
    with fresh_pg_database("helyx_migrate") as url:
        engine = make_engine(url)
        try:
            with engine.begin() as conn:  # migrations 0003 and 0004 are in: running them again fails
                conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
            with pytest.raises(Exception) as failed:
                upgrade(engine)
            assert "current transaction is aborted" not in str(failed.value), failed.value
            assert _advisory_locks_held(url) == 0
        finally:
            engine.dispose()


def test_a_schema_a_newer_release_migrated_is_refused_and_the_lock_let_go() -> None:
    with fresh_pg_database("helyx_migrate") as url:
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
            with pytest.raises(SchemaNewerThanRelease):
                upgrade(engine)
            assert _advisory_locks_held(url) == 0
        finally:
            engine.dispose()
