"""PostgreSQL shut down and started again while media jobs are running and settling, in the
production shape: the API (uvicorn) and two `helyx worker` processes on real PostgreSQL and Redis,
with chat completions and job polls arriving all along.

Jobs that finish while the database is down keep their result and settle once it is back (a
finished job is not run again); jobs still running across the outage keep their lease (it is
longer than the outage) and are not taken over and run a second time. Every job ends succeeded,
each hold is resolved exactly once, and every account's books balance with no hold left open.
Requests meanwhile get a 503 in the error envelope, never a 500, and are served again once the
database is back."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.api.chat.helpers import assert_books_balance, books
from tests.conftest import PG_ADMIN_URL, create_test_account, emptied_pg_engine
from tests.fakes.gemini_image_upstream import FakeGeminiImageUpstream
from tests.fakes.server import serve
from tests.integration.faults import (
    LOAD_CLIENT_TIMEOUT,
    Call,
    Load,
    assert_each_hold_resolved_once,
    assert_envelope,
    entries_by_hold,
    forget_dead_connections,
    isolated_redis_url,
    job_rows,
    postgres_stopped,
    wait_jobs,
    wait_postgres,
)
from tests.integration.helpers_processes import Processes, base_env, wait_dramatiq_workers

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.exclusive]

JOB_SECONDS = 2.0  # simulated nano-banana-pro jobs: they finish while the database is down
SLOW_SECONDS = 13.0  # slow-image jobs (a fake Gemini that answers late): running across the outage
LEASE_SECONDS = 10.0  # renewed every 2.5 s: longer than the outage plus one renewal interval
DOWN_SECONDS = 1.0  # between the stop and the start: the server is gone 3-4 s in all
FAST_JOBS, SLOW_JOBS = 6, 2
IMAGE_PRICE = 200_000_000
CHAT_HOLD_TTL = 4  # a chat whose settlement met the outage: its hold expires (free) after this
SLOW_KEY_ENV = "HELYX_FAULTS_SLOW_IMAGE_KEY"  # read by the catalog, not a HELYX setting
CLIENT_TIMEOUT = LOAD_CLIENT_TIMEOUT
MAX_PROBE_SECONDS = 3.0  # a refusal during the outage comes fast
RECOVERY_SECONDS = 3.0  # requests started this long after the start are all served


def _chat(http: httpx.Client, i: int) -> httpx.Response:
    return http.post("/chat/completions", json={"model": "helyx-3.5", "max_tokens": 64,
                                                "messages": [{"role": "user", "content": f"question {i}"}]})


def test_a_postgres_restart_mid_settlement_settles_every_job_once_and_answers_503_meanwhile(
        pg_url: str, tmp_path: Path) -> None:
    redis_url = isolated_redis_url()
    slow = FakeGeminiImageUpstream()
    slow.hang = SLOW_SECONDS
    engine = emptied_pg_engine(pg_url, pool_size=8)
    jobs_account = create_test_account(engine, "ultra")  # 8 jobs may run at once
    chat_account = create_test_account(engine, "pro")
    before = {a.account_id: books(engine, a.account_id) for a in (jobs_account, chat_account)}
    prober = Load()
    try:
        with serve(slow.app) as slow_url, Processes(tmp_path / "procs") as procs:
            catalog = tmp_path / "catalog.toml"
            catalog.write_text(
                f'[providers.slow]\nkind = "gemini"\nbase_url = "{slow_url}/v1beta"\napi_key_env = "{SLOW_KEY_ENV}"\n'
                '[models."slow-image"]\nkind = "image"\nrate = "200"\nprovider = "slow"\n'
                'upstream_model = "gemini-3-pro-image-preview"\n', "utf-8")
            env = base_env(database_url=pg_url, redis_url=redis_url, simulate=1, storage_dir=tmp_path / "files",
                           secret_key="faults-signing-secret-0123456789abcdef", catalog=catalog,
                           simulated_job_seconds=JOB_SECONDS, job_lease_seconds=LEASE_SECONDS,
                           sweep_interval_seconds=0.5, stale_queued_seconds=3, job_max_retries=3,
                           job_retry_backoff_ms=200, hold_ttl_seconds=CHAT_HOLD_TTL, shutdown_grace_seconds=1,
                           upstream_read_timeout=60, rate_limit_pro=100_000, rate_limit_ultra=100_000)
            env[SLOW_KEY_ENV] = "fake-google-key"
            api = procs.uvicorn(env)
            for _ in range(2):
                procs.worker(env, processes=1, threads=FAST_JOBS + SLOW_JOBS)
            wait_dramatiq_workers(redis_url, 2)

            models = ["nano-banana-pro"] * FAST_JOBS + ["slow-image"] * SLOW_JOBS
            with httpx.Client(base_url=api.api, headers=jobs_account.headers, timeout=10, trust_env=False) as http, \
                    ThreadPoolExecutor(len(models)) as submitting:
                job_ids = list(submitting.map(lambda m: _submit(http, m[1], m[0]), enumerate(models)))
            running = _wait_all_running(engine, job_ids)
            first_start = min(r["started_at"] for r in running)

            with ThreadPoolExecutor(2) as pool:
                futures = [
                    pool.submit(prober.run, "chat", api.api, chat_account, 0.1, _chat),
                    pool.submit(prober.run, "poll", api.api, jobs_account, 0.2,
                                lambda h, _: h.get(f"/jobs/{job_ids[0]}")),
                ]
                try:
                    # Down before the simulated jobs end (2 s) and before the first renewal (2.5 s).
                    time.sleep(max(0.0, first_start + 0.6 - time.time()))
                    with postgres_stopped(PG_ADMIN_URL) as outage:
                        # Down across every job's first lease renewal, whatever the stop took.
                        first_beat = max(r["started_at"] for r in running) + LEASE_SECONDS / 4
                        time.sleep(max(DOWN_SECONDS, first_beat + 0.5 - time.time()))
                    forget_dead_connections()  # ours and the session fixtures'
                    wait_postgres(engine)
                    down_at, up_at, surely_down_until = outage.down_at, outage.up_at, outage.last_refused_at
                    down_wall, up_wall = (time.time() - (time.monotonic() - t) for t in (down_at, up_at))
                    time.sleep(max(0.0, up_at + RECOVERY_SECONDS + 3 - time.monotonic()))
                finally:
                    prober.stop.set()
                for future in futures:
                    future.result(timeout=CLIENT_TIMEOUT + 5)

            rows = wait_jobs(engine, job_ids, timeout=40)
            # A chat whose settlement met the outage left its hold open: the sweeper expires it.
            deadline = time.monotonic() + CHAT_HOLD_TTL + 10
            while books(engine, chat_account.account_id).open_holds:
                assert time.monotonic() < deadline, "a chat hold stayed open"
                time.sleep(0.2)
            assert api.alive(), api.log()
            assert all(p.alive() for p in procs.started if p.name == "worker")
            slow_calls = slow.calls

        _report(prober.calls, rows, down_at, up_at, down_wall, up_wall)

        # Every job succeeded, ran once (no takeover after the outage), and was charged once.
        met_outage = [r for r in rows if r["finished_at"] > down_wall]
        assert len(met_outage) >= FAST_JOBS // 2 + SLOW_JOBS, "the outage missed the settlements"
        for row in rows:
            assert row["status"] == "succeeded" and row["charged"] == row["price"] == IMAGE_PRICE, row
            # Its lease outlived the outage: nobody took it over and ran it again.
            assert row["attempts"] == 1, (row["model"], row["attempts"], row["started_at"] - down_wall)
        assert slow_calls == SLOW_JOBS  # the slow provider was called once per job
        holds = assert_each_hold_resolved_once(engine, jobs_account.account_id)
        assert sorted(h["purpose"] for h in holds) == sorted(f"job:{j}" for j in job_ids)
        assert all((h["status"], h["charged"]) == ("settled", IMAGE_PRICE) for h in holds), holds
        jobs_after = assert_books_balance(engine, jobs_account.account_id)
        assert before[jobs_account.account_id].balance - jobs_after.balance == len(job_ids) * IMAGE_PRICE

        # Requests during the outage: 200, or a fast 503 in the envelope; never a 500 or a hang.
        for probe in prober.calls:
            assert probe.status in (200, 503), probe
            assert probe.ended - probe.started < MAX_PROBE_SECONDS, probe
            if probe.status == 503:
                error = assert_envelope(httpx.Response(503, json=probe.body), 503)
                # A chat answered upstream whose settlement met the outage cannot say whether it was charged.
                codes = {"service_unavailable"} | ({"charge_unconfirmed"} if probe.kind == "chat" else set())
                assert error["type"] == "server_error" and error["code"] in codes, probe
        # Within the outage for certain: the watcher saw it refuse after these ended (it came back at
        # some point before up_at, and a fast request can fit between the two).
        during = [p for p in prober.calls if down_at + 0.5 <= p.started and p.ended <= surely_down_until]
        assert during and all(p.status == 503 for p in during), during
        recovered = [p for p in prober.calls if p.started >= up_at + RECOVERY_SECONDS]
        assert recovered and all(p.status == 200 for p in recovered), [p for p in recovered if p.status != 200]

        # Chats: each 200 settled its hold at its charge; any other hold was given back in full.
        served = {p.body["id"]: p for p in prober.calls if p.kind == "chat" and p.status == 200}
        chat_holds = assert_each_hold_resolved_once(engine, chat_account.account_id)
        settled = {h["purpose"].removeprefix("chat:"): h for h in chat_holds if h["status"] == "settled"}
        assert settled.keys() == served.keys()
        print(f"chat holds: {len(settled)} settled, "
              f"{sum(h['status'] == 'expired' for h in chat_holds)} expired after the outage (503 after reserving)")
        for generation_id, hold in settled.items():
            assert hold["charged"] == round(served[generation_id].body["helyx"]["credits_charged"] * 1_000_000)
        assert all(h["charged"] == 0 for h in chat_holds if h["status"] != "settled"), chat_holds
        chat_after = assert_books_balance(engine, chat_account.account_id)
        spent = sum(-e[2] for es in entries_by_hold(engine, chat_account.account_id).values() for e in es)
        assert before[chat_account.account_id].balance - chat_after.balance == spent
    finally:
        prober.stop.set()
        engine.dispose()


def _submit(http: httpx.Client, model: str, i: int) -> str:
    response = http.post("/images/generations", headers={"Prefer": "respond-async"},
                         json={"model": model, "prompt": f"{model} {i}", "size": "256x256"})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _wait_all_running(engine: Engine, job_ids: list[str], timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = job_rows(engine, job_ids)
        if all(r["status"] == "running" for r in rows):
            return rows
        assert time.monotonic() < deadline, [(r["status"], r["started_at"], r["finished_at"]) for r in rows]
        time.sleep(0.05)


def _report(probes: list[Call], rows: list[dict[str, Any]], down_at: float, up_at: float, down_wall: float,
            up_wall: float) -> None:
    refused = [p for p in probes if p.status == 503]
    first_ok = min((p.ended for p in probes if p.started >= up_at and p.status == 200), default=up_at)
    last_refused = max((p.ended for p in refused), default=up_at)
    settled_after = sorted(round(r["finished_at"] - up_wall, 2) for r in rows if r["finished_at"] > down_wall)
    print(f"\ndown {up_at - down_at:.2f} s (first refused to first accepted connection); {len(probes)} requests, "
          f"{len(refused)} refused with 503 (slowest "
          f"{max((p.ended - p.started for p in refused), default=0):.2f} s); last 503 {last_refused - up_at:+.2f} s "
          f"after the start; first success {first_ok - up_at:+.2f} s after; jobs that met the outage settled at "
          f"{settled_after} s after the start")
