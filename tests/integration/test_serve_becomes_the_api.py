"""`helyx serve` in the production shape replaces itself (exec) with the API process once its checks
and the migration are done: the process a process manager started is the one that serves (its
signals reach uvicorn), a fresh image with neither the CLI and Alembic nor the working directory on
its path, and the serve lock taken before the exec is still held after it, until the process ends."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from common.db import libpq_conninfo
from common.jobs_lock import LOCK_KEY
from tests.integration.faults import isolated_redis_url
from tests.integration.helpers_processes import HELYX, base_env, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _lock_sessions_of(database_url: str, pid: int) -> int:
    """Sessions holding the serve lock, named after process `pid` (common.jobs_lock names them)."""
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s"
            " AND a.application_name LIKE %s", (LOCK_KEY, f"helyx serve (production shape) (pid {pid} on %")).fetchone()
    assert row is not None
    return int(row[0])


def _wait_ready(popen: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert popen.poll() is None, f"serve exited with {popen.returncode}:\n{log.read_text('utf-8', 'replace')}"
        try:
            if httpx.get(url + "/readyz", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text("utf-8", "replace")
        time.sleep(0.1)


def test_the_serve_process_becomes_the_api_and_keeps_the_serve_lock_until_it_ends(pg_url: str, tmp_path: Path
                                                                                  ) -> None:
    env = base_env(database_url=pg_url, redis_url=isolated_redis_url(), simulate=1, storage_dir=tmp_path / "files",
                   secret_key="exec-test-signing-secret-0123456789")
    # -P keeps the working directory off the API process's sys.path, as it is off the `helyx` script's
    (tmp_path / "secrets.py").write_text("raise SystemExit('the working directory was on sys.path')\n", "utf-8")
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen([HELYX, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=tmp_path,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        _wait_ready(popen, f"http://127.0.0.1:{port}", log)
        with open(f"/proc/{popen.pid}/cmdline", "rb") as f:
            argv = f.read().decode().split("\0")
        assert argv[1:4] == ["-P", "-m", "api.serve_process"], argv  # a fresh image: none of the CLI's modules
        # the lock taken before the exec (its descriptor inherited) and the API's own (api.app's lifespan)
        assert _lock_sessions_of(pg_url, popen.pid) == 2
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/models", timeout=5, trust_env=False).status_code == 401

        popen.send_signal(signal.SIGTERM)  # what a process manager sends: uvicorn's graceful stop
        code = popen.wait(timeout=40)
        assert code == -signal.SIGTERM, log.read_text("utf-8", "replace")  # uvicorn re-raises the signal it stopped on
        deadline = time.monotonic() + 10
        while _lock_sessions_of(pg_url, popen.pid):  # gone with the process
            assert time.monotonic() < deadline, "the serve lock outlived its process"
            time.sleep(0.05)
        assert "Traceback" not in log.read_text("utf-8", "replace")
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout=10)
