"""A request still waiting, at the end of the shutdown grace, for an answer it has not begun to
send (a chat waiting for its provider, streamed or not; an image request waiting for its job) is
answered in the error shape, not with uvicorn's plain-text 500 (which the SDK retries without an
`x-should-retry`): a chat with a 503 `server_shutdown`, its generation `cancelled` with that
code and nothing charged; an image request with the 202 and the job it submitted, which is
finished (and charged once) when the server runs again."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from tests.integration.helpers_processes import HELYX, Processes, base_env
from tests.waiting import until

ORIGIN = "https://app.example.com"  # a browser's: the cut answer carries the CORS headers a normal one does


def _cut(tmp_path: Path, path: str, body: dict[str, Any], **settings: object) -> tuple[httpx.Response | None, Path,
                                                                                         str, dict[str, str]]:
    """POST `body` to a `helyx serve` whose grace is 1 s, SIGTERM it once the request holds its cost: (the answer,
    the database, the server's log, the environment)."""
    db = tmp_path / "helyx.db"
    env = base_env(database_url=f"sqlite:///{db}", storage_dir=tmp_path / "files", shutdown_grace_seconds=1,
                   cors_origins=ORIGIN, **settings)
    created = subprocess.run([HELYX, "account", "create", "cut@example.com", "--plan", "pro"], env=env,
                             cwd=tmp_path, check=True, capture_output=True, timeout=60)
    key = json.loads(created.stdout)["api_key"]
    answers: list[httpx.Response] = []
    with Processes(tmp_path / "procs") as procs:
        api = procs.serve(env)

        def send() -> None:
            answers.append(httpx.post(api.api + path, json=body, timeout=30,
                                      headers={"Authorization": f"Bearer {key}", "Origin": ORIGIN}))

        sender = threading.Thread(target=send)
        sender.start()
        # the request under way (its hold open), however slow the machine
        until(lambda: _rows(db, "SELECT COUNT(*) FROM holds WHERE status = 'open'") == [(1,)] or not sender.is_alive(),
              lambda: (answers, api.log()), seconds=15, every=0.05)
        assert sender.is_alive(), (answers, api.log())
        api.signal_group(signal.SIGTERM)
        sender.join(30)
        assert api.popen.wait(30) == 0, api.log()
        log = api.log(100_000)
    env["HELYX_KEY"] = key
    return (answers[0] if answers else None), db, log, env


def _rows(db: Path, query: str) -> list[tuple[Any, ...]]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]
    finally:
        engine.dispose()


def _logged_status(log: str, route: str) -> list[int]:
    """The request log's statuses for the route: what was sent, as the metrics count it."""
    lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"time"')]
    return [line["status"] for line in lines if line.get("route") == route]


def _assert_chat_cut(answer: httpx.Response | None, db: Path, log: str) -> None:
    assert answer is not None, log
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/json" and answer.headers.get("x-request-id")
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert _logged_status(log, "/api/v1/chat/completions") == [503], log
    error = answer.json()["error"]
    assert (error["code"], error["type"]) == ("server_shutdown", "server_error") and "shutting down" in error["message"]
    assert _rows(db, "SELECT status, error_code, credits FROM generations") == [("cancelled", "server_shutdown", 0)]
    assert _rows(db, "SELECT COUNT(*) FROM holds WHERE status = 'open'") == [(0,)]
    assert _rows(db, "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'settle'") == [(0,)]  # nothing charged
    [(balance, entries)] = _rows(db, "SELECT allowance + topup, (SELECT SUM(amount) FROM ledger_entries) FROM accounts")
    assert balance == entries
    lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"time"')]
    assert not [line for line in lines if "exc_info" in line], "a traceback for the planned cut"


def test_a_chat_waiting_for_its_provider_is_answered_503_and_charged_nothing(tmp_path: Path) -> None:
    answer, db, log, _ = _cut(tmp_path, "/chat/completions",
                              {"model": "gpt-4o", "messages": [{"role": "user", "content": "slow"}]},
                              simulated_chat_delay=8)
    _assert_chat_cut(answer, db, log)


def test_a_stream_cut_before_its_first_chunk_is_answered_503_and_charged_nothing(tmp_path: Path) -> None:
    answer, db, log, _ = _cut(tmp_path, "/chat/completions",
                              {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "slow"}]},
                              simulated_chat_delay=8)
    _assert_chat_cut(answer, db, log)


def test_an_image_request_cut_while_waiting_is_answered_202_with_its_job(tmp_path: Path) -> None:
    answer, db, log, env = _cut(tmp_path, "/images/generations", {"prompt": "a slow lighthouse", "size": "256x256"},
                                simulated_job_seconds=6, image_wait_seconds=60)
    assert answer is not None, log
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["object"] == "job" and job["status"] in ("queued", "running"), job
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "x-ratelimit-remaining-requests" in answer.headers
    assert _logged_status(log, "/api/v1/images/generations") == [202], log
    assert _rows(db, "SELECT id FROM jobs") == [(job["id"],)]
    with Processes(tmp_path / "again") as procs:  # the job the client was told of is finished, charged once
        api = procs.serve(env)
        deadline = time.monotonic() + 60
        while (status := httpx.get(f"{api.api}/jobs/{job['id']}", timeout=10,
                                   headers={"Authorization": f"Bearer {env['HELYX_KEY']}"}).json()["status"]) \
                not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, api.log()
            time.sleep(0.2)
    assert status == "succeeded"
    assert _rows(db, "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'settle'") == [(1,)]
    assert _rows(db, "SELECT COUNT(*) FROM holds WHERE status = 'open'") == [(0,)]
