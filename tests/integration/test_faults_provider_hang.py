"""An image provider that hangs past the job's time limit, against real worker processes on real
PostgreSQL and Redis: nano-banana-pro's provider (gemini) points at the fake Gemini image
upstream, which holds every answer for longer than HELYX_IMAGE_JOB_TIME_LIMIT. The job fails
with `job_time_limit` once its limit passes (not when the provider answers), is not retried, its
hold is released in full, and nothing is charged later, even after the provider would have
answered."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.api.chat.helpers import assert_books_balance, books
from tests.conftest import create_test_account, emptied_pg_engine
from tests.fakes.gemini_image_upstream import FakeGeminiImageUpstream
from tests.fakes.server import serve
from tests.integration.faults import (
    assert_each_hold_resolved_once,
    entries_by_hold,
    isolated_redis_url,
    job_rows,
    wait_jobs,
)
from tests.integration.helpers_processes import Processes, base_env, wait_dramatiq_workers

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

TIME_LIMIT = 2.0  # HELYX_IMAGE_JOB_TIME_LIMIT
HANG = 7.0  # the fake provider answers after this: well past the limit, well within the read timeout


def test_a_provider_hanging_past_the_time_limit_fails_the_job_refunded_and_never_charges_later(
        pg_url: str, tmp_path: Path) -> None:
    upstream = FakeGeminiImageUpstream()
    upstream.hang = HANG
    redis_url = isolated_redis_url()
    engine = emptied_pg_engine(pg_url, pool_size=4)
    account = create_test_account(engine, "free")
    before = books(engine, account.account_id)
    try:
        with serve(upstream.app) as upstream_url, Processes(tmp_path / "procs") as procs:
            catalog = tmp_path / "catalog.toml"
            catalog.write_text(f'[providers.gemini]\nbase_url = "{upstream_url}/v1beta"\n', "utf-8")
            env = base_env(database_url=pg_url, redis_url=redis_url, simulate=1, storage_dir=tmp_path / "files",
                           secret_key="faults-signing-secret-0123456789abcdef", catalog=catalog,
                           image_job_time_limit=TIME_LIMIT, job_lease_seconds=4, sweep_interval_seconds=0.5,
                           stale_queued_seconds=3, job_max_retries=3, job_retry_backoff_ms=100,
                           upstream_read_timeout=60, shutdown_grace_seconds=1)
            api = procs.uvicorn(env)
            procs.worker({**env, "GEMINI_API_KEY": "fake-google-key"}, processes=1, threads=2)
            wait_dramatiq_workers(redis_url, 1)

            with httpx.Client(base_url=api.api, headers=account.headers, timeout=10, trust_env=False) as http:
                submitted = http.post("/images/generations", headers={"Prefer": "respond-async"},
                                      json={"model": "nano-banana-pro", "prompt": "a slow lighthouse",
                                            "size": "1024x1024"})
                submitted_at = time.monotonic()
                assert submitted.status_code == 202, submitted.text
                job_id = submitted.json()["id"]
                assert books(engine, account.account_id).held == 200_000_000  # reserved at submission

                [row] = wait_jobs(engine, [job_id], timeout=TIME_LIMIT + 15)
                failed_after = time.monotonic() - submitted_at
                assert upstream.calls == 1 and upstream.requests[0].headers["x-goog-api-key"] == "fake-google-key"
                view = http.get(f"/jobs/{job_id}").json()

                # Past the moment the provider answers (its late answer reaches a cancelled request).
                time.sleep(max(0.0, row["started_at"] + HANG + 2.0 - time.time()))
                [later] = job_rows(engine, [job_id])
                later_view = http.get(f"/jobs/{job_id}").json()
                calls_later = upstream.calls
            print(f"failed {failed_after:.2f} s after submission "
                  f"(ran {row['finished_at'] - row['started_at']:.2f} s; limit {TIME_LIMIT} s, hang {HANG} s)")

        assert row["status"] == "failed" and row["error_code"] == "job_time_limit", row
        assert row["attempts"] == 1 and row["charged"] == 0 and row["result"] is None, row
        assert TIME_LIMIT <= row["finished_at"] - row["started_at"] < HANG, row  # the limit ended it
        assert view["status"] == "failed" and view["error"]["code"] == "job_time_limit", view
        assert view["helyx"]["credits_charged"] == 0, view

        assert later == row, (later, row)  # nothing changed after the provider answered
        assert later_view == view
        assert calls_later == 1  # not retried: a time limit is final
        with engine.connect() as conn:
            from sqlalchemy import text

            assert conn.execute(text("SELECT COUNT(*) FROM files WHERE job_id = :j"), {"j": job_id}).scalar() == 0
        holds = assert_each_hold_resolved_once(engine, account.account_id)
        assert [(h["purpose"], h["status"], h["charged"]) for h in holds] == [(f"job:{job_id}", "released", 0)]
        assert [e[0] for e in entries_by_hold(engine, account.account_id)[row["hold_id"]]] == ["reserve", "release"]
        after = assert_books_balance(engine, account.account_id)
        assert after.balance == before.balance and after.available == before.available
    finally:
        engine.dispose()
