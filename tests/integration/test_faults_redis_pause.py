"""Redis frozen (SIGSTOP) for ten seconds under a steady load, in the production shape: the API
(uvicorn) and two `helyx worker` processes on real PostgreSQL and Redis, chat completions and
image submissions (`Prefer: respond-async`) from a few threads.

While Redis is frozen, the rate limiter cannot count and the broker cannot dispatch: every
billable request must then fail fast with a 503 in the error envelope (never a hang, never a
500, never a request let through unlimited), and nothing may be served without a reservation.
A submission that passed the rate limiter just before the freeze (held up behind a row lock)
and then cannot hand its job to the broker must not stall the API's event loop meanwhile: the
job is in its row with its hold, so it is answered 202 once the send times out, and the sweeper
sends it again later. Once Redis is back, service resumes, every accepted job finishes and is
charged exactly once, and every account's books balance with no hold left open."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.api.chat.helpers import assert_books_balance, books
from tests.conftest import TestAccount, create_test_account, emptied_pg_engine
from tests.integration.faults import (
    LOAD_CLIENT_TIMEOUT,
    Call,
    Load,
    assert_each_hold_resolved_once,
    assert_envelope,
    entries_by_hold,
    isolated_redis_url,
    redis_paused,
    wait_jobs,
)
from tests.integration.helpers_processes import Processes, base_env, wait_dramatiq_workers

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.exclusive]

PAUSE_SECONDS = 10.0
BEFORE_SECONDS, AFTER_SECONDS = 3.0, 6.0  # steady load around the pause
CHAT_THREADS, IMAGE_THREADS = 3, 2
CHAT_EVERY, IMAGE_EVERY = 0.05, 0.4  # seconds between one thread's requests
CLIENT_TIMEOUT = LOAD_CLIENT_TIMEOUT
FAST_503_SECONDS = 3.0  # "fails fast": the limiter gives Redis one second; room for a loaded machine
RECOVERY_SECONDS = 3.0  # after SIGCONT, requests started this much later must all succeed
HEALTHZ_EVERY, HEALTHZ_MAX_SECONDS = 0.1, 1.0  # the liveness probe never waits on Redis
BROKER_SEND_TIMEOUT = 5.0  # workers.broker: a send to an unanswering Redis fails after this
LOCK_HELD_IN_PAUSE = 1.0
IMAGE_PRICE = 200_000_000


def _chat(http: httpx.Client, i: int) -> httpx.Response:
    return http.post("/chat/completions", json={"model": "helyx-3.5", "max_tokens": 64,
                                                "messages": [{"role": "user", "content": f"question {i}"}]})


def _image(http: httpx.Client, i: int) -> httpx.Response:
    return http.post("/images/generations", headers={"Prefer": "respond-async"},
                     json={"model": "nano-banana-pro", "prompt": f"picture {i}", "size": "256x256"})


def _healthz(http: httpx.Client, i: int) -> httpx.Response:
    return http.get(str(http.base_url).removesuffix("/api/v1/") + "/healthz")


def _readyz(http: httpx.Client, i: int) -> httpx.Response:
    return http.get(str(http.base_url).removesuffix("/api/v1/") + "/readyz")


class HeldSubmission:
    """An image submission that has passed the rate limiter (Redis) and waits on a row lock on its
    account, taken here, before it reserves: released while Redis is frozen, it commits its job
    and then meets the frozen broker."""

    def __init__(self, engine: Engine, api: str, account: TestAccount, load: Load) -> None:
        self.account, self.load = account, load
        self.conn = engine.connect()
        self.tx = self.conn.begin()
        self.conn.execute(text("SELECT 1 FROM accounts WHERE id = :a FOR UPDATE"), {"a": account.account_id})
        self.thread = threading.Thread(target=self._send, args=(api,), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        try:
            while not self._waiting(engine):
                assert time.monotonic() < deadline and self.thread.is_alive(), load.calls[-3:]
                time.sleep(0.02)
        except BaseException:
            self.release()
            raise

    @staticmethod
    def _waiting(engine: Engine) -> bool:
        """The submission's reservation waits for our lock (the transactional verb's UPDATE, or the
        one-statement form's CTE that starts with it)."""
        with engine.connect() as conn:
            return bool(conn.execute(text(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND (query LIKE 'UPDATE accounts SET held%'"
                " OR query LIKE 'WITH a AS (UPDATE accounts SET held%')")).scalar())

    def _send(self, api: str) -> None:
        with httpx.Client(base_url=api, headers=self.account.headers, timeout=CLIENT_TIMEOUT,
                          trust_env=False) as http:
            self.load.record("held-image", self.account.account_id, lambda: _image(http, -1))

    def release(self) -> None:
        if self.tx.is_active:
            self.tx.rollback()
        self.conn.close()


def test_a_frozen_redis_fails_requests_fast_with_503_and_every_accepted_job_is_charged_once(
        pg_url: str, tmp_path: Path) -> None:
    redis_url = isolated_redis_url()
    engine = emptied_pg_engine(pg_url, pool_size=8)
    chat_accounts = [create_test_account(engine, "pro") for _ in range(CHAT_THREADS)]
    image_accounts = [create_test_account(engine, "ultra") for _ in range(IMAGE_THREADS + 1)]
    held_account = image_accounts.pop()
    before = {a.account_id: books(engine, a.account_id) for a in chat_accounts + image_accounts + [held_account]}
    env = base_env(database_url=pg_url, redis_url=redis_url, simulate=1, storage_dir=tmp_path / "files",
                   secret_key="faults-signing-secret-0123456789abcdef", simulated_job_seconds=0.5,
                   job_lease_seconds=4, sweep_interval_seconds=0.5, stale_queued_seconds=3,
                   job_max_retries=3, job_retry_backoff_ms=200, shutdown_grace_seconds=1,
                   rate_limit_pro=100_000, rate_limit_ultra=100_000)
    load = Load()
    try:
        with Processes(tmp_path / "procs") as procs:
            api = procs.uvicorn(env)
            for _ in range(2):
                procs.worker(env, processes=1, threads=4)
            wait_dramatiq_workers(redis_url, 2)

            with ThreadPoolExecutor(CHAT_THREADS + IMAGE_THREADS + 2) as pool:
                running = [pool.submit(load.run, "chat", api.api, a, CHAT_EVERY, _chat) for a in chat_accounts]
                running += [pool.submit(load.run, "image", api.api, a, IMAGE_EVERY, _image) for a in image_accounts]
                running.append(pool.submit(load.run, "healthz", api.api, held_account, HEALTHZ_EVERY, _healthz))
                running.append(pool.submit(load.run, "readyz", api.api, held_account, 0.5, _readyz))
                held = None
                try:
                    time.sleep(BEFORE_SECONDS)
                    held = HeldSubmission(engine, api.api, held_account, load)
                    with redis_paused():
                        paused_at = time.monotonic()
                        time.sleep(LOCK_HELD_IN_PAUSE)
                        held.release()
                        time.sleep(PAUSE_SECONDS - LOCK_HELD_IN_PAUSE)
                        resumed_at, resumed_wall = time.monotonic(), time.time()
                    time.sleep(AFTER_SECONDS)
                finally:
                    load.stop.set()
                    if held is not None:
                        held.release()
                        held.thread.join(CLIENT_TIMEOUT + 5)
                for future in running:
                    future.result(timeout=CLIENT_TIMEOUT + 5)

            calls = sorted(load.calls, key=lambda c: c.started)
            accepted_jobs = [c.body["id"] for c in calls if c.kind.endswith("image") and c.status == 202]
            rows = wait_jobs(engine, accepted_jobs, timeout=60)
            assert api.alive(), api.log()
            assert all(w.alive() for w in procs.started if w.name == "worker")

        _report(calls, rows, paused_at, resumed_at, resumed_wall)

        # The liveness probe answered at once throughout: nothing blocked the API's event loop.
        probes = [c for c in calls if c.kind == "healthz"]
        assert probes and all(c.status == 200 for c in probes), [c for c in probes if c.status != 200]
        stalled = [(round(c.started - paused_at, 2), round(c.took, 2)) for c in probes if c.took > HEALTHZ_MAX_SECONDS]
        assert not stalled, f"/healthz stalled while Redis was frozen (start vs SIGSTOP, took): {stalled}"
        # Readiness says the broker is down while it is, and answers quickly all along.
        ready = [c for c in calls if c.kind == "readyz"]
        assert all(c.took < FAST_503_SECONDS for c in ready), [c for c in ready if c.took >= FAST_503_SECONDS]
        for probe in ready:
            if paused_at <= probe.started and probe.ended <= resumed_at:
                assert probe.status == 503 and probe.body["checks"]["broker"] != "ok", probe
                assert probe.body["checks"]["database"] == "ok", probe
            elif probe.ended < paused_at or probe.started > resumed_at + RECOVERY_SECONDS:
                assert probe.status == 200, probe
        # The submission held up across the freeze: accepted (its job and hold are committed) once
        # the broker send times out, the lock and that timeout being all it waited for.
        [held_call] = [c for c in calls if c.kind == "held-image"]
        assert held_call.status == 202, held_call
        assert held_call.ended - paused_at < LOCK_HELD_IN_PAUSE + BROKER_SEND_TIMEOUT + FAST_503_SECONDS, held_call
        calls = [c for c in calls if c.kind in ("chat", "image")]

        # Every answer is a success or a 503 in the envelope: no 500, no hang, no dropped connection.
        for call in calls:
            assert call.status in (200, 202, 503), call
            if call.status == 503:
                error = assert_envelope_body(call)
                assert (error["type"], error["code"]) == ("server_error", "service_unavailable"), call
        # While frozen: nothing is served (the limiter does not fail open) and refusals come fast.
        frozen = [c for c in calls if paused_at <= c.started and c.ended <= resumed_at]
        assert len(frozen) >= CHAT_THREADS + IMAGE_THREADS, "no load while Redis was frozen"
        assert all(c.status == 503 for c in frozen), [c for c in frozen if c.status != 503]
        # An image submission that passed the limiter just before SIGSTOP then waits on its broker
        # send, as the held one does: that wait is bounded by the send timeout. Everything else,
        # every refusal included, is fast.
        straddled_send = [c for c in calls if c.kind == "image" and c.status == 202
                          and c.started < paused_at < c.ended]
        assert all(c.ended - paused_at < BROKER_SEND_TIMEOUT + FAST_503_SECONDS for c in straddled_send), \
            straddled_send
        slow = [c for c in calls if c.took > FAST_503_SECONDS and c not in straddled_send]
        assert not slow, [(c.kind, c.status, round(c.started - paused_at, 2), round(c.took, 2)) for c in slow]
        # Once Redis is back, everything is served again.
        recovered = [c for c in calls if c.started >= resumed_at + RECOVERY_SECONDS]
        assert recovered and all(c.status in (200, 202) for c in recovered), [c for c in recovered if c.status >= 300]
        assert any(c.status == 200 and c.started < paused_at for c in calls)

        # No success without a reservation: every 200 chat has one hold, settled at its charge.
        _assert_chats_settled(engine, calls, chat_accounts)
        # Every accepted job: succeeded, charged exactly once; no job behind a refusal.
        for row in rows:
            assert row["status"] == "succeeded" and row["charged"] == row["price"] == IMAGE_PRICE, row
        for account in [*image_accounts, held_account]:
            mine = [c for c in [*calls, held_call] if c.account == account.account_id and c.status == 202]
            holds = assert_each_hold_resolved_once(engine, account.account_id)
            assert len(holds) == len(mine)
            assert all((h["status"], h["charged"]) == ("settled", IMAGE_PRICE) for h in holds), holds
            with engine.connect() as conn:
                jobs = conn.execute(text("SELECT COUNT(*) FROM jobs WHERE account_id = :a"),
                                    {"a": account.account_id}).scalar()
            assert jobs == len(mine)
        for account in [*chat_accounts, *image_accounts, held_account]:
            after = assert_books_balance(engine, account.account_id)  # entries == balance, no open hold
            spent = sum(-e[2] for es in entries_by_hold(engine, account.account_id).values() for e in es)
            assert before[account.account_id].balance - after.balance == spent
    finally:
        load.stop.set()
        engine.dispose()


def assert_envelope_body(call: Call) -> dict[str, Any]:
    response = httpx.Response(call.status, json=call.body)
    return assert_envelope(response, call.status)


def _assert_chats_settled(engine: Any, calls: list[Call], accounts: list[TestAccount]) -> None:
    for account in accounts:
        served = {c.body["id"]: c for c in calls if c.account == account.account_id and c.status == 200}
        holds = assert_each_hold_resolved_once(engine, account.account_id)
        by_purpose = {h["purpose"]: h for h in holds}
        assert len(holds) == len(served), (len(holds), len(served))  # a refusal holds nothing
        for generation_id, call in served.items():
            hold = by_purpose[f"chat:{generation_id}"]
            assert hold["status"] == "settled", hold
            assert hold["charged"] == round(call.body["helyx"]["credits_charged"] * 1_000_000) > 0, (hold, call)


def _report(calls: list[Call], rows: list[dict[str, Any]], paused_at: float, resumed_at: float,
            resumed_wall: float) -> None:
    """The measured behaviour, printed (pytest -s)."""
    billable = [c for c in calls if c.kind in ("chat", "image")]
    refused = [c for c in billable if c.status == 503]
    first_ok = min((c.ended for c in billable if c.started >= resumed_at and c.status in (200, 202)), default=None)
    last_refused = max((c.ended for c in refused), default=paused_at)
    by_kind = {k: [c.took for c in refused if c.kind == k] for k in ("chat", "image")}
    probes = [c.took for c in calls if c.kind == "healthz"]
    held = [c for c in calls if c.kind == "held-image"]
    held_job = [r for r in rows if held and r["id"] == held[0].body.get("id")]
    held_done = held_job[0]["finished_at"] - resumed_wall if held_job else float("nan")
    print(f"\n{len(billable)} billable requests, {len(refused)} refused with 503 (slowest: chat "
          f"{max(by_kind['chat'], default=0):.2f} s, image {max(by_kind['image'], default=0):.2f} s); "
          f"/healthz slowest {max(probes, default=0):.2f} s; held submission answered {held[0].status if held else '-'}"
          f" {held[0].ended - paused_at if held else 0:.2f} s after SIGSTOP; last 503 "
          f"{last_refused - resumed_at:+.2f} s after SIGCONT; first success "
          f"{(first_ok or resumed_at) - resumed_at:+.2f} s after SIGCONT; {len(rows)} jobs; the held job (its "
          f"message lost to the freeze) finished {held_done:+.2f} s after SIGCONT")
