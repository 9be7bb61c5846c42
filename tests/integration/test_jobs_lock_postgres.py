"""On PostgreSQL, one self-contained `helyx serve` or the production workers run a database's jobs,
never both and never two serves, whatever their storage directories (common/jobs_lock.py). A
second serve used to take the first one's running job (the provider called twice, the file
written where the first could not serve it: a charged job whose download was a 404)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from common.db import make_engine
from tests.conftest import create_test_account, fresh_pg_database
from tests.integration.faults import isolated_redis_url
from tests.integration.helpers_processes import HELYX, Proc, Processes, base_env, free_port
from tests.integration.test_jobs_selfcontained_restart import _rows, _submit
from tests.waiting import until


@pytest.fixture
def database() -> Iterator[str]:
    """A database of this test's own: a worker left over by another test must not hold its lock."""
    with fresh_pg_database("helyx_lock") as url:
        yield url


def _serve_env(database: str, storage: Path) -> dict[str, str]:
    return base_env(database_url=database, storage_dir=storage, simulated_job_seconds=3,
                    shutdown_grace_seconds=1, rate_limit_pro=10_000)


def _second_serve(procs: Processes, env: dict[str, str]) -> Proc:
    return procs.start("second", [HELYX, "serve", "--host", "127.0.0.1", "--port", str(free_port())], env)


def _exit_of(proc: Proc, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not proc.alive(), f"{proc.name} still running:\n{proc.log()}"
    return int(proc.popen.returncode)


def test_a_second_serve_with_its_own_storage_stops_at_once_and_takes_no_running_job(
        database: str, tmp_path: Path) -> None:
    engine = make_engine(database)
    account = create_test_account(engine, "pro")
    try:
        with Processes(tmp_path / "procs") as procs:
            first = procs.serve(_serve_env(database, tmp_path / "one"))
            job_id = _submit(first, account, "a lighthouse")["id"]
            until(lambda: _rows(engine, [job_id])[0]["status"] == "running", "the job never ran", seconds=30, every=0.1)

            second = _second_serve(procs, _serve_env(database, tmp_path / "two"))
            assert _exit_of(second) == 1
            log = second.log()
            assert "already running the jobs of this database" in log, log
            assert re.search(rf"helyx serve \(pid \d+ on {re.escape(socket.gethostname())}\)", log), log
            assert "serving on" not in log  # nothing started: no worker, no demo key

            until(lambda: _rows(engine, [job_id])[0]["status"] in ("succeeded", "failed"), "the job never ended",
                  seconds=30, every=0.1)
            row = _rows(engine, [job_id])[0]
            assert row["status"] == "succeeded" and row["attempts"] == 1, row  # never taken from the first
            assert first.alive()
            assert not (tmp_path / "two").exists() or not any((tmp_path / "two").rglob("*.png"))
    finally:
        engine.dispose()


def test_production_workers_and_a_self_contained_serve_never_run_one_databases_jobs_together(
        database: str, tmp_path: Path) -> None:
    redis_url = isolated_redis_url()
    worker_env = base_env(database_url=database, redis_url=redis_url, storage_dir=tmp_path / "prod",
                          shutdown_grace_seconds=1)
    with Processes(tmp_path / "procs") as procs:
        worker = procs.worker(worker_env, processes=1, threads=1)
        engine = make_engine(database)
        try:
            def held_by_a_worker() -> bool:
                with engine.connect() as conn:
                    return bool(conn.execute(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name LIKE 'helyx worker (pid %'")).scalar())
            until(held_by_a_worker, f"the worker never took the lock:\n{worker.log()}", seconds=40, every=0.1)
        finally:
            engine.dispose()

        serve = _second_serve(procs, _serve_env(database, tmp_path / "stray"))
        assert _exit_of(serve) == 1
        assert "helyx worker (pid " in serve.log(), serve.log()
        assert "serving on" not in serve.log()

        worker.kill()  # PostgreSQL drops a killed session's lock
        served = procs.serve(_serve_env(database, tmp_path / "alone"))  # the lock went with the worker
        late = procs.worker(worker_env, processes=1, threads=1)
        until(lambda: "a self-contained helyx serve is running the jobs of this database" in late.log(),
              f"a worker started beside the serve:\n{late.log()}", seconds=40, every=0.1)
        assert served.alive()


def test_the_lock_session_is_watched_by_keepalives_and_never_timed_out_idle(database: str) -> None:
    """A host that died would otherwise hold the lock until the server's keepalives notice (two
    hours by default), and an idle-session timeout would drop it while the process runs on."""
    from common import jobs_lock

    conn = jobs_lock.hold(database, shared=True, holder="helyx test")
    try:
        shown = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                 for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
                              "idle_session_timeout")}
    finally:
        conn.close()
    assert shown == {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3",
                     "idle_session_timeout": "0"}


def test_a_lock_released_a_moment_ago_is_taken_and_one_still_held_is_refused_with_its_holder(
        database: str) -> None:
    """PostgreSQL drops a session's lock as its backend exits, a moment after the client closed it:
    a serve restarted at once, or a test's next holder, found it still taken (a flaky test)."""
    import threading

    from common import jobs_lock

    first = jobs_lock.hold(database, shared=False, holder="helyx first")
    threading.Timer(0.3, first.close).start()  # ends while the next one is trying
    started = time.monotonic()
    second = jobs_lock.hold(database, shared=False, holder="helyx second")
    try:
        assert time.monotonic() - started < jobs_lock.RELEASE_GRACE_SECONDS
        with pytest.raises(jobs_lock.JobsTaken, match=r"helyx second \(pid \d+"):
            jobs_lock.hold(database, shared=True, holder="helyx third")
        assert time.monotonic() - started >= jobs_lock.RELEASE_GRACE_SECONDS  # waited its grace, then refused
    finally:
        second.close()
