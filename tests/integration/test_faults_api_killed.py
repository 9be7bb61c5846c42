"""The API process SIGKILLed between reserve and settle (in the middle of a streamed chat), in the
production shape on real PostgreSQL and Redis: the hold it took stays open (nothing settles it,
nothing charges), until its TTL passes and a worker process's sweeper expires it. The account
pays nothing and its books balance."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.api.chat.helpers import assert_books_balance, books, generation_row, hold_for
from tests.conftest import create_test_account, emptied_pg_engine
from tests.integration.faults import assert_each_hold_resolved_once, entries_by_hold, isolated_redis_url
from tests.integration.helpers_processes import Processes, base_env, wait_dramatiq_workers

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

HOLD_TTL = 8  # seconds: long enough for a worker to boot before the hold is due
SWEEP_INTERVAL = 0.5
CHUNK_DELAY = 0.4  # per streamed chunk of the simulated model: the stream lasts several seconds


def test_an_api_killed_mid_stream_charges_nothing_and_its_hold_is_expired_by_the_sweeper(
        pg_url: str, tmp_path: Path) -> None:
    redis_url = isolated_redis_url()
    engine = emptied_pg_engine(pg_url, pool_size=4)
    account = create_test_account(engine, "free")
    before = books(engine, account.account_id)
    env = base_env(database_url=pg_url, redis_url=redis_url, simulate=1, storage_dir=tmp_path / "files",
                   secret_key="faults-signing-secret-0123456789abcdef", simulated_chat_delay=CHUNK_DELAY,
                   hold_ttl_seconds=HOLD_TTL, sweep_interval_seconds=SWEEP_INTERVAL, shutdown_grace_seconds=1)
    try:
        with Processes(tmp_path / "procs") as procs:
            api = procs.uvicorn(env)
            body = {"model": "helyx-3.5", "stream": True,
                    "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper"}]}
            received: list[dict[str, object]] = []
            with httpx.Client(timeout=10, trust_env=False) as http, http.stream(
                    "POST", api.api + "/chat/completions", json=body, headers=account.headers) as response:
                assert response.status_code == 200, response.read()
                lines = response.iter_lines()
                for line in lines:
                    if line.startswith("data: {"):
                        received.append(json.loads(line[6:]))
                    if len(received) == 2:
                        break
                generation_id = str(received[0]["id"])
                hold = hold_for(engine, generation_id)
                assert hold["status"] == "open"  # reserved, the stream is under way
                api.kill()  # SIGKILL: no finally, no settle, no shutdown hook
                killed_at = time.time()
                tail = []
                with pytest.raises(httpx.HTTPError):  # the connection dies mid-stream
                    tail.extend(lines)
                assert "data: [DONE]" not in tail

            # Nothing settled it: the hold is open, the generation unrecorded, nothing charged.
            assert hold_for(engine, generation_id)["status"] == "open"
            assert generation_row(engine, generation_id) is None
            during = assert_books_balance(engine, account.account_id, open_holds=1)
            assert during.balance == before.balance and during.held == hold["amount"]

            # A worker process (its sweeper) comes up while the hold is not due yet: it stays open.
            procs.worker(env, processes=1, threads=1)
            wait_dramatiq_workers(redis_url, 1)
            time.sleep(2 * SWEEP_INTERVAL)
            if time.time() < hold["expires_at"] - SWEEP_INTERVAL:  # the worker booted within the TTL
                assert hold_for(engine, generation_id)["status"] == "open", "released before its TTL"

            deadline = hold["expires_at"] + 10
            while hold_for(engine, generation_id)["status"] == "open":
                assert time.time() < deadline, "the sweeper did not expire the hold of a killed API"
                time.sleep(0.1)
            expired = hold_for(engine, generation_id)
            swept_after = time.time() - hold["expires_at"]
            print(f"killed {killed_at - hold['created_at']:.2f} s after reserve; "
                  f"expired {expired['resolved_at'] - hold['expires_at']:.2f} s after its TTL "
                  f"(seen {swept_after:.2f} s after)")

        assert expired["status"] == "expired" and expired["charged"] == 0, expired
        assert expired["resolved_at"] >= hold["expires_at"]
        assert [e[0] for e in entries_by_hold(engine, account.account_id)[hold["id"]]] == ["reserve", "expire"]
        assert_each_hold_resolved_once(engine, account.account_id)
        after = assert_books_balance(engine, account.account_id)  # no open hold, entries == balance
        assert after.balance == before.balance and after.available == before.available
    finally:
        engine.dispose()
