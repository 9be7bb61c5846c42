"""SIGTERM lets an in-flight stream finish and settle, and the API then exits."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from tests.integration.helpers_processes import HELYX, Processes, base_env


def test_sigterm_lets_an_in_flight_stream_finish_and_settle(tmp_path: Path) -> None:
    db = tmp_path / "helyx.db"
    env = base_env(database_url=f"sqlite:///{db}", storage_dir=tmp_path / "files", simulated_chat_delay=0.3,
                   shutdown_grace_seconds=20)
    created = subprocess.run([HELYX, "account", "create", "grace@example.com", "--plan", "pro"], env=env,
                             cwd=tmp_path, check=True, capture_output=True, timeout=60)
    key = json.loads(created.stdout)["api_key"]
    chunks: list[str] = []
    with Processes(tmp_path / "procs") as procs:
        api = procs.serve(env)
        first_chunk = threading.Event()

        def stream() -> None:
            body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "a long answer"}]}
            with httpx.stream("POST", api.api + "/chat/completions", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {key}"}) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        chunks.append(line[6:])
                        first_chunk.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_chunk.wait(15), api.log()
        api.signal_group(signal.SIGTERM)  # a graceful stop, not a kill
        time.sleep(0.3)
        refused = False
        try:
            httpx.get(api.url + "/healthz", timeout=2)
        except httpx.HTTPError:
            refused = True
        reader.join(30)
        code = api.popen.wait(30)

    assert refused, "a new connection was accepted after SIGTERM"
    assert chunks[-1] == "[DONE]", chunks[-3:]
    final = json.loads(chunks[-2])
    assert final["usage"]["completion_tokens"] > 0 and final["helyx"]["credits_charged"] > 0
    # uvicorn re-raises the signal after its graceful exit; the test watchdog wrapper reports it as 128+15
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), api.log()
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM generations")).scalar_one()
        open_holds = conn.execute(text("SELECT COUNT(*) FROM holds WHERE status = 'open'")).scalar_one()
        balance = conn.execute(text("SELECT allowance + topup FROM accounts")).scalar_one()
        entries = conn.execute(text("SELECT SUM(amount) FROM ledger_entries")).scalar_one()
    assert status == "succeeded" and open_holds == 0 and balance == entries
