"""The per-account running count (every claim under a running cap) reads the partial index of
running jobs on PostgreSQL, however many finished jobs the account has and however many dead
'running' index entries they left since the last vacuum."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, text

from common.jobs import lifecycle
from tests.conftest import create_test_account

pytestmark = pytest.mark.postgres
NOW = 1_800_000_000.0


def _add_jobs(engine: Engine, account_id: str, key_id: str, count: int, status: str) -> None:
    with engine.begin() as conn:
        for i in range(count):
            conn.execute(text(
                "INSERT INTO jobs (id, account_id, key_id, type, model, params, status, progress, attempts,"
                " lease_until, hold_id, price, charged, created_at, enqueued_at)"
                " VALUES (:id, :aid, :kid, 'image', 'nano-banana-pro', :params, 'queued', 0, 0, NULL, :hold, 200, 0,"
                " :now, :now)"), {"id": f"job_{status}_{i}", "aid": account_id, "kid": key_id,
                                  "params": json.dumps({"prompt": "x"}), "hold": f"hold_{status}_{i}", "now": NOW})
    with engine.begin() as conn:  # each passes through 'running', as a real job does
        conn.execute(text("UPDATE jobs SET status = 'running', lease_until = :until WHERE id LIKE :pattern"),
                     {"until": NOW + 60, "pattern": f"job_{status}_%"})
    if status != "running":
        with engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET status = :status, lease_until = NULL WHERE id LIKE :pattern"),
                         {"status": status, "pattern": f"job_{status}_%"})


def test_the_running_count_uses_the_partial_index(pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "ultra")
    _add_jobs(pg_engine, account.account_id, account.key_id, 400, "succeeded")
    _add_jobs(pg_engine, account.account_id, account.key_id, 3, "running")
    params = {"aid": account.account_id, "now": NOW}
    with pg_engine.begin() as conn:
        conn.execute(text("ANALYZE jobs"))
        count = conn.execute(lifecycle._RUNNING_FOR_ACCOUNT, params).scalar_one()
        plan = json.dumps(conn.execute(text("EXPLAIN (FORMAT JSON) " + lifecycle._RUNNING_FOR_ACCOUNT.text),
                                       params).scalar_one())
    assert count == 3
    assert "ix_jobs_running_account" in plan, plan
    assert "Bitmap" not in plan, plan  # a plain index scan marks dead entries and skips them next time
