"""The self-contained `helyx serve` (SQLite, in-process broker and worker threads) stopped with jobs
queued and running, by SIGTERM and by SIGKILL, then started again on the same data directory: every
job is finished after the restart and each is charged exactly once (SPEC §5: nothing is lost)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from common.db import make_engine
from common.migrate import upgrade
from tests.api.chat.helpers import assert_books_balance, books
from tests.conftest import TestAccount, create_test_account
from tests.integration.helpers_processes import Proc, Processes, base_env

IMAGE_PRICE = 200_000_000
JOBS = 6


def _rows(engine: Engine, ids: list[str]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": i}).mappings().one())
                for i in ids]


def _kinds(engine: Engine, job_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT e.kind FROM ledger_entries e JOIN holds h ON h.id = e.hold_id"
                                 " WHERE h.purpose = :p ORDER BY e.id"), {"p": f"job:{job_id}"})
        return [r[0] for r in rows]


def _submit(api: Proc, account: TestAccount, prompt: str, sync: bool = False) -> dict[str, Any]:
    headers = {**account.headers, **({} if sync else {"Prefer": "respond-async"})}
    with httpx.Client(timeout=30, trust_env=False) as http:
        response = http.post(api.api + "/images/generations", headers=headers,
                             json={"prompt": prompt, "size": "256x256"})
    assert response.status_code == (200 if sync else 202), response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_jobs_queued_or_running_when_serve_stops_are_finished_after_a_restart_and_charged_once(
        stop: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = base_env(database_url=f"sqlite:///{data / 'helyx.db'}", storage_dir=data / "files",
                   simulated_job_seconds=2, shutdown_grace_seconds=1, sweep_interval_seconds=1,
                   rate_limit_pro=10_000)
    engine = make_engine(env["HELYX_DATABASE_URL"])
    upgrade(engine)
    account = create_test_account(engine, "pro")  # runs four jobs at a time
    before = books(engine, account.account_id)

    with Processes(tmp_path / "procs") as procs:
        first = procs.serve(env)
        finished_early = _submit(first, account, "before the stop", sync=True)
        early_url = finished_early["data"][0]["url"]
        ids = [_submit(first, account, f"job {i}")["id"] for i in range(JOBS)]

        deadline = time.monotonic() + 20
        while True:  # stop only once some run and some still wait
            statuses = [r["status"] for r in _rows(engine, ids)]
            if "running" in statuses and "queued" in statuses:
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(0.05)
        if stop == "SIGTERM":
            first.terminate(timeout=15)
        else:
            first.kill()
        assert not first.alive()
        unfinished = [r for r in _rows(engine, ids) if r["status"] not in ("succeeded", "failed", "canceled")]
        assert unfinished, "the stop came too late to leave anything unfinished"
        assert all(r["charged"] == 0 for r in unfinished)

        second = procs.serve(env, port=first.port)  # same data directory, same address
        deadline = time.monotonic() + 60
        while True:
            rows = _rows(engine, ids)
            if all(r["status"] == "succeeded" for r in rows):
                break
            assert not [r for r in rows if r["status"] in ("failed", "canceled")], rows
            assert time.monotonic() < deadline, ([r["status"] for r in rows], second.log())
            time.sleep(0.1)

        for row in rows:
            assert row["charged"] == row["price"] == IMAGE_PRICE, row
            assert _kinds(engine, row["id"]) == ["reserve", "settle"], row["id"]
        with httpx.Client(timeout=10, trust_env=False) as plain:
            # the signing key lives in the data directory: a URL from the first run still opens
            assert plain.get(early_url).status_code == 200
            job = plain.get(f"{second.api}/jobs/{ids[0]}", headers=account.headers).json()
            assert job["status"] == "succeeded"
            assert plain.get(job["result"]["files"][0]["url"]).headers["content-type"] == "image/png"
        second.terminate(timeout=15)

    after = assert_books_balance(engine, account.account_id)  # no hold left open
    assert before.balance - after.balance == (JOBS + 1) * IMAGE_PRICE
    engine.dispose()


def test_a_chat_cut_by_a_killed_serve_holds_nothing_after_the_restart(tmp_path: Path) -> None:
    """Its hold stayed open until its expiry (15 min by default), and the account's next requests
    got 402 "held for requests in progress" (found by a self-contained review): nothing can settle
    it once its process is gone, and the next serve is the only API. Released at the start."""
    data = tmp_path / "data"
    env = base_env(database_url=f"sqlite:///{data / 'helyx.db'}", storage_dir=data / "files",
                   simulated_chat_delay=1, hold_ttl_seconds=900)
    engine = make_engine(env["HELYX_DATABASE_URL"])
    upgrade(engine)
    account = create_test_account(engine, "free")
    before = books(engine, account.account_id)
    body = {"model": "helyx-3.5", "messages": [{"role": "user", "content": "a long story"}], "stream": True,
            "max_tokens": 500}

    with Processes(tmp_path / "procs") as procs:
        first = procs.serve(env)

        def call() -> None:
            with contextlib.suppress(httpx.HTTPError), httpx.Client(timeout=30, trust_env=False) as http:
                http.post(first.api + "/chat/completions", headers=account.headers, json=body)

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 10
        while books(engine, account.account_id).held == 0:  # under way: its credits are held
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.02)
        first.kill()
        caller.join(10)
        second = procs.serve(env, port=first.port)
        with httpx.Client(timeout=10, trust_env=False) as http:
            credits = http.get(second.api + "/credits", headers=account.headers).json()
        assert credits["held"] == 0, credits
        assert "released 1 chat hold(s)" in second.log()
        second.terminate(timeout=15)

    after = assert_books_balance(engine, account.account_id)  # no hold left open, entries sum up
    assert after.balance == before.balance  # charged nothing: its answer never reached the client
    engine.dispose()
