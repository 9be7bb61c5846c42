"""`helyx serve --workers N` killed with SIGKILL: its uvicorn worker processes stop too (a chaos
review found them serving on, unsupervised, holding the port, so that the next `helyx serve`
could not start)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.integration.faults import isolated_redis_url
from tests.integration.helpers_processes import HELYX, Processes, base_env, free_port, wait_ready

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_api_worker_processes_stop_when_serve_is_killed(pg_url: str, tmp_path: Path) -> None:
    env = base_env(database_url=pg_url, redis_url=isolated_redis_url(), simulate=1, storage_dir=tmp_path / "files",
                   secret_key="killed-serve-secret-0123456789abcdef", shutdown_grace_seconds=1)
    with Processes(tmp_path / "procs") as procs:
        port = free_port()
        api = procs.start("serve", [HELYX, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                          env, port)
        wait_ready(api, 60)
        (serve,) = _children(api.popen.pid)  # under the test's watchdog
        workers = _children(serve)  # uvicorn's two worker processes, and multiprocessing's resource tracker
        assert sum(b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes() for w in workers) == 2, workers
        os.kill(serve, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (any(_alive(w) for w in workers) or _listening(port)):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), api.log()
        assert not _listening(port)
