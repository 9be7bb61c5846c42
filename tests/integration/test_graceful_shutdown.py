"""SIGTERM lets an in-flight stream finish and settle, and the API then exits; a stream still
running when the grace ends is cut, ends with an error event that says so, and is still settled
(for what it produced) and logged. In the
self-contained mode a running media job finishes too, before the process exits (0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from common.money import MICRO
from tests.integration.helpers_processes import HELYX, Proc, Processes, base_env
from tests.integration.webhook_receiver import Receiver


def _stream_then_sigterm(tmp_path: Path, grace: float) -> tuple[list[str], bool, int, Proc, Path]:
    """One streamed chat through `helyx serve`, SIGTERM after its first chunk: (the data lines
    received, whether a new connection was refused meanwhile, the exit code, the process, the db).
    A body that does not end cleanly (a truncated chunked body) adds "<truncated>" to the lines."""
    db = tmp_path / "helyx.db"
    env = base_env(database_url=f"sqlite:///{db}", storage_dir=tmp_path / "files", simulated_chat_delay=0.3,
                   shutdown_grace_seconds=grace)
    created = subprocess.run([HELYX, "account", "create", "grace@example.com", "--plan", "pro"], env=env,
                             cwd=tmp_path, check=True, capture_output=True, timeout=60)
    key = json.loads(created.stdout)["api_key"]
    chunks: list[str] = []
    with Processes(tmp_path / "procs") as procs:
        api = procs.serve(env)
        first_chunk = threading.Event()

        def stream() -> None:
            body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "a long answer"}]}
            try:
                with httpx.stream("POST", api.api + "/chat/completions", json=body, timeout=30,
                                  headers={"Authorization": f"Bearer {key}"}) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            chunks.append(line[6:])
                            first_chunk.set()
            except httpx.HTTPError:
                chunks.append("<truncated>")

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_chunk.wait(15), api.log()
        api.signal_group(signal.SIGTERM)  # a graceful stop, not a kill
        refused = _refuses_while_streaming(api, chunks)
        reader.join(30)
        code = api.popen.wait(30)
    return chunks, refused, code, api, db


def _refuses_while_streaming(api: Proc, chunks: list[str]) -> bool:
    """Whether the server refused a new connection within 2 s of the signal, the stream still going
    (uvicorn closes its listener on its next tick, every 0.1 s: asked again until then)."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and "[DONE]" not in chunks:
        try:
            httpx.get(api.url + "/healthz", timeout=2)
        except httpx.HTTPError:
            return "[DONE]" not in chunks and "<truncated>" not in chunks
        time.sleep(0.05)
    return False


def _books(db: Path) -> dict[str, Any]:
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, credits, completion_tokens, error_code FROM generations")).one()
        return {"generation": tuple(row),
                "open_holds": conn.execute(text("SELECT COUNT(*) FROM holds WHERE status = 'open'")).scalar_one(),
                "balance": conn.execute(text("SELECT allowance + topup FROM accounts")).scalar_one(),
                "entries": conn.execute(text("SELECT SUM(amount) FROM ledger_entries")).scalar_one()}


def test_sigterm_lets_an_in_flight_stream_finish_and_settle(tmp_path: Path) -> None:
    chunks, refused, code, api, db = _stream_then_sigterm(tmp_path, grace=20)
    assert refused, "new connections were still accepted 2 s after SIGTERM"
    assert chunks[-1] == "[DONE]", chunks[-3:]
    final = json.loads(chunks[-2])
    assert final["usage"]["completion_tokens"] > 0 and final["helyx"]["credits_charged"] > 0
    assert code == 0, api.log()  # uvicorn raises the signal again when done: helyx serve takes it as Ctrl-C
    books = _books(db)
    assert books["generation"][0] == "succeeded" and books["generation"][3] is None and books["open_holds"] == 0
    assert books["balance"] == books["entries"]


def test_a_stream_cut_at_the_end_of_the_grace_is_settled_and_logged(tmp_path: Path) -> None:
    chunks, _, code, api, db = _stream_then_sigterm(tmp_path, grace=1)
    assert len(chunks) > 2 and "[DONE]" not in chunks and "<truncated>" not in chunks, chunks[-3:]  # cut short, cleanly
    last = json.loads(chunks[-1])  # an error event, as an upstream failing mid-stream ends one
    assert last["error"]["code"] == "server_shutdown" and "shutting down" in last["error"]["message"]
    assert code == 0, api.log()
    books = _books(db)
    status, credits, produced, error_code = books["generation"]
    assert (status, error_code, books["open_holds"]) == ("cancelled", "server_shutdown", 0)
    assert credits > 0 and produced > 0 and last["helyx"]["credits_charged"] * MICRO == credits  # as told
    assert books["balance"] == books["entries"]
    lines = [json.loads(line) for line in api.log(100_000).splitlines() if line.startswith('{"time"')]
    logged = [line for line in lines if line.get("route") == "/api/v1/chat/completions"]
    assert len(logged) == 1, api.log()
    assert (logged[0]["outcome"], logged[0]["status"]) == ("cancelled", 200)
    assert not [line for line in lines if "exc_info" in line], "a traceback for the planned cut"
    cut = [line for line in lines if line["message"].startswith("a request still running at the end of the shutdown")]
    assert [line["level"] for line in cut] == ["WARNING"], api.log(100_000)


def _running_video(tmp_path: Path, procs: Processes, job_seconds: float, grace: float,
                   webhook_url: str | None = None) -> tuple[Proc, str, Any]:
    """`helyx serve` running one video job: (the process, the job id, an engine on its database)."""
    db = tmp_path / "helyx.db"
    env = base_env(database_url=f"sqlite:///{db}", storage_dir=tmp_path / "files",
                   simulated_job_seconds=job_seconds, shutdown_grace_seconds=grace,
                   webhook_allow_private=1 if webhook_url else None)
    created = subprocess.run([HELYX, "account", "create", "job@example.com", "--plan", "plus"], env=env,
                             cwd=tmp_path, check=True, capture_output=True, timeout=60)
    key = json.loads(created.stdout)["api_key"]
    engine = create_engine(f"sqlite:///{db}")
    api = procs.serve(env)
    body = {"model": "vo3", "prompt": "waves", **({"webhook_url": webhook_url} if webhook_url else {})}
    submitted = httpx.post(api.api + "/videos", json=body, timeout=30,
                           headers={"Authorization": f"Bearer {key}"})
    assert submitted.status_code == 200, submitted.text
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 15
    with engine.connect() as conn:
        while conn.execute(text("SELECT status FROM jobs WHERE id = :j"), {"j": job_id}).scalar_one() != "running":
            assert time.monotonic() < deadline, api.log()
            time.sleep(0.05)
            conn.rollback()
    return api, job_id, engine


def test_a_job_cut_off_at_the_end_of_the_grace_is_named_in_the_log_and_queued_again(tmp_path: Path) -> None:
    """It stayed `running` until its lease lapsed, counting against its account's running cap."""
    with Processes(tmp_path / "procs") as procs:
        api, job_id, engine = _running_video(tmp_path, procs, job_seconds=8, grace=1)
        api.signal_group(signal.SIGTERM)
        assert api.popen.wait(30) == 0, api.log()
        with engine.connect() as conn:
            row = conn.execute(text("SELECT status, lease_owner, attempts FROM jobs WHERE id = :j"),
                               {"j": job_id}).one()
            assert (row.status, row.lease_owner, row.attempts) == ("queued", None, 0), row  # attempt given back
        assert f"queued again, to run once more and be charged once: {job_id}" in api.log(100_000)
    engine.dispose()


def test_sigterm_lets_a_running_job_finish_before_serve_exits(tmp_path: Path) -> None:
    """uvicorn raised SIGTERM again after its graceful stop, and its default action ended the
    process there: a running job was cut off (and run, and paid to its provider, again at the next
    start). The job now finishes within the grace, once, and nothing is left to resume."""
    with Processes(tmp_path / "procs") as procs:
        api, job_id, engine = _running_video(tmp_path, procs, job_seconds=3, grace=20)
        api.signal_group(signal.SIGTERM)
        time.sleep(0.5)
        api.signal_group(signal.SIGTERM)  # a repeated SIGTERM does not cut the job short
        code = api.popen.wait(30)
        assert code == 0, api.log()
        with engine.connect() as conn:
            row = conn.execute(text("SELECT status, attempts, charged, price FROM jobs WHERE id = :j"),
                               {"j": job_id}).one()
            assert (row.status, row.attempts, row.charged) == ("succeeded", 1, row.price), (row, api.log())
            assert conn.execute(text("SELECT COUNT(*) FROM holds WHERE status = 'open'")).scalar_one() == 0
        assert "workers stopped after" in api.log(100_000) and "cut off" not in api.log(100_000)
    engine.dispose()


def test_the_webhook_of_a_job_that_finishes_during_the_grace_is_sent_before_serve_exits(
        receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    """Its message was queued in the stopping process only, and waited for the next start (and
    the sweeper, a minute after it): never, if the server was not started again."""
    recorder, receiver_url = receiver
    with Processes(tmp_path / "procs") as procs:
        api, job_id, engine = _running_video(tmp_path, procs, job_seconds=2, grace=20,
                                             webhook_url=receiver_url + "/done")
        api.signal_group(signal.SIGTERM)
        assert api.popen.wait(30) == 0, api.log()
        deliveries = recorder.to("/done")  # no waiting: it came before the exit
        assert [json.loads(d.body)["type"] for d in deliveries] == ["job.succeeded"], api.log(100_000)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT webhook_status FROM jobs WHERE id = :j"),
                                {"j": job_id}).scalar_one() == "delivered"
    engine.dispose()


def test_a_second_ctrl_c_gives_the_running_job_back_as_the_end_of_the_grace_does(tmp_path: Path) -> None:
    """The second Ctrl-C's KeyboardInterrupt escaped the wait and skipped the give-back: the job
    stayed `running` until its lease lapsed and came back with an attempt used (a new-user review)."""
    with Processes(tmp_path / "procs") as procs:
        api, job_id, engine = _running_video(tmp_path, procs, job_seconds=8, grace=20)
        # to `helyx serve` alone, as a terminal's Ctrl-C (not to the test's watchdog above it, which
        # a SIGINT would end)
        (serve,) = (int(pid) for pid in Path(f"/proc/{api.popen.pid}/task/{api.popen.pid}/children").read_text()
                    .split())
        os.kill(serve, signal.SIGINT)
        time.sleep(1.0)
        os.kill(serve, signal.SIGINT)
        assert api.popen.wait(30) == 0, api.log()
        with engine.connect() as conn:
            row = conn.execute(text("SELECT status, lease_owner, attempts FROM jobs WHERE id = :j"),
                               {"j": job_id}).one()
            assert (row.status, row.lease_owner, row.attempts) == ("queued", None, 0), (row, api.log(100_000))
        assert f"queued again, to run once more and be charged once: {job_id}" in api.log(100_000)
    engine.dispose()
