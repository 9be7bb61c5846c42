"""A second self-contained `helyx serve` on the same database, or on a taken port, stops before
any worker starts: it takes no job from the instance that runs them (cli/single_instance.py)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from common.db import make_engine
from common.migrate import upgrade
from tests.conftest import create_test_account
from tests.integration.helpers_processes import HELYX, Processes, base_env, free_port
from tests.integration.test_jobs_selfcontained_restart import _rows, _submit


def _self_contained_env(data: Path) -> dict[str, str]:
    return base_env(database_url=f"sqlite:///{data / 'helyx.db'}", storage_dir=data / "files",
                    simulated_job_seconds=3, shutdown_grace_seconds=1, rate_limit_pro=10_000)


def _exit_of(proc, timeout: float = 30.0) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not proc.alive(), f"{proc.name} still running:\n{proc.log()}"
    return int(proc.popen.returncode)


def test_a_second_serve_on_the_same_database_stops_at_once_and_takes_no_running_job(tmp_path: Path) -> None:
    env = _self_contained_env(tmp_path / "data")
    engine = make_engine(env["HELYX_DATABASE_URL"])
    upgrade(engine)
    account = create_test_account(engine, "pro")

    with Processes(tmp_path / "procs") as procs:
        first = procs.serve(env)
        job_id = _submit(first, account, "a lighthouse")["id"]
        deadline = time.monotonic() + 20
        while _rows(engine, [job_id])[0]["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)

        second = procs.start("second", [HELYX, "serve", "--host", "127.0.0.1", "--port", str(free_port())],
                             env)
        assert _exit_of(second) == 1
        assert "already running on this database" in second.log()
        assert re.search(r"\(pid \d+\)", second.log()), second.log()  # the holder, named

        deadline = time.monotonic() + 30
        while (row := _rows(engine, [job_id])[0])["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert row["status"] == "succeeded" and row["attempts"] == 1, row  # never taken from the first
        assert first.alive()

        first.kill()  # the kernel drops the lock of a killed process: the next start goes ahead
        third = procs.serve(env)
        with httpx.Client(timeout=10, trust_env=False) as http:
            assert http.get(third.url + "/readyz").status_code == 200


def test_a_serve_whose_port_is_taken_stops_before_its_workers_start(tmp_path: Path) -> None:
    with Processes(tmp_path / "procs") as procs:
        first = procs.serve(_self_contained_env(tmp_path / "one"))
        other = _self_contained_env(tmp_path / "two")
        second = procs.start("second", [HELYX, "serve", "--host", "127.0.0.1", "--port", str(first.port)], other)
        assert _exit_of(second) == 1
        assert f"cannot listen on 127.0.0.1:{first.port}" in second.log()
        assert "serving on" not in second.log()  # nothing started: no worker, no demo key
