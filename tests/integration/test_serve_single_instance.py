"""A second self-contained `helyx serve` on the same database, or on a taken port, stops before
any worker starts: it takes no job from the instance that runs them (cli/single_instance.py)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from cli import single_instance
from common.db import make_engine
from common.migrate import upgrade
from tests.conftest import create_test_account, make_settings
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
        assert "helyx: error: another `helyx serve` (pid" in second.log()  # prefixed as every refusal
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


def test_of_two_serves_started_together_on_one_port_the_second_stops_at_once(tmp_path: Path) -> None:
    """The port is listened on as it is bound: with SO_REUSEADDR a bound socket nobody listens on
    yet can be bound again, and the second serve then ran its workers while serving nothing."""
    with Processes(tmp_path / "procs") as procs:
        port = free_port()
        first_env = _self_contained_env(tmp_path / "one")
        first = procs.start("first", [HELYX, "serve", "--host", "127.0.0.1", "--port", str(port)], first_env)
        lock = Path(first_env["HELYX_DATABASE_URL"].removeprefix("sqlite:///") + ".serve.lock")
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip()):  # the first has claimed its database ...
            assert first.alive() and time.monotonic() < deadline, first.log()
            time.sleep(0.01)
        time.sleep(0.05)  # ... and bound its port, but is still starting (migrations, imports, workers)
        second = procs.start("second", [HELYX, "serve", "--host", "127.0.0.1", "--port", str(port)],
                             _self_contained_env(tmp_path / "two"))
        assert _exit_of(second) == 1
        assert f"cannot listen on 127.0.0.1:{port}" in second.log(), second.log()
        with httpx.Client(timeout=10, trust_env=False) as http:
            deadline = time.monotonic() + 40
            while True:
                try:
                    if http.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert first.alive() and time.monotonic() < deadline, first.log()
                time.sleep(0.1)


def _until_no_earlier_holder(database_url: str, seconds: float = 10.0) -> None:
    """The lock of this pytest process's PostgreSQL database can still be held for a moment by an
    earlier test's process, SIGKILLed at its end, until PostgreSQL sees its session close."""
    if not database_url.startswith("postgresql"):
        return
    import psycopg

    from common.db import libpq_conninfo
    from common.jobs_lock import LOCK_KEY

    deadline = time.monotonic() + seconds
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as conn:
        while conn.execute("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 AND objid = %s"
                           " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                           (LOCK_KEY,)).fetchone() != (0,):
            assert time.monotonic() < deadline, "an earlier holder of the jobs lock is still there"
            time.sleep(0.05)


@pytest.mark.parametrize("on", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_self_contained_serve_cannot_start_beside_a_production_shape_serve(
        tmp_path: Path, on: str, request: pytest.FixtureRequest) -> None:
    """A self-contained serve releases every open chat hold and takes up every unfinished job as it
    starts: one started beside a production API released the holds of its calls under way, which
    were then answered free (found by a diff review). The production serve holds the lock shared."""
    overrides = {"database_url": request.getfixturevalue("pg_url")} if on == "postgres" else {}
    settings = make_settings(tmp_path, **overrides)
    _until_no_earlier_holder(settings.database_url)
    named = "a production-shape `helyx serve`" if on == "sqlite" else "helyx serve \\(production shape\\)"
    with single_instance.share_database(settings), single_instance.share_database(settings), \
            pytest.raises(single_instance.AlreadyServing, match=named):  # several share it; the refusal names them
        single_instance.claim_database(settings)
    with single_instance.claim_database(settings), pytest.raises(single_instance.AlreadyServing):
        single_instance.share_database(settings)  # nor the other way round
    with single_instance.claim_database(settings):  # each lock went with its holder
        pass


@pytest.mark.redis
@pytest.mark.parametrize("on", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_every_production_shape_api_process_holds_the_lock_itself(
        tmp_path: Path, on: str, request: pytest.FixtureRequest) -> None:
    """Held by the serve's parent alone, a `--workers 2` serve whose parent was killed went on serving
    with no lock, and a self-contained serve started beside it (found by a second diff review)."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    overrides = {"database_url": request.getfixturevalue("pg_url")} if on == "postgres" else {}
    settings = make_settings(tmp_path, redis_url=request.getfixturevalue("redis_url"), **overrides)
    _until_no_earlier_holder(settings.database_url)
    upgrade(make_engine(settings.database_url))
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        with pytest.raises(single_instance.AlreadyServing):
            single_instance.claim_database(settings)
    with single_instance.claim_database(settings):  # gone with the app
        pass
