"""The options every PostgreSQL connection is opened with (common.db.pg_connect_args) leave what
the database URL sets to the URL: an operator's `?options=-c search_path=...` reached the main
pools but not /metrics' own connections, which then read another schema's tables (a diff review)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import make_url

from common.db import PG_CONNECT_ARGS, pg_connect_args, pg_connect_args_of_conninfo, probe
from tests.ports import refusing_port


def test_the_urls_own_settings_win_and_its_options_are_kept() -> None:
    plain = pg_connect_args("postgresql://u@h/db")
    assert plain == PG_CONNECT_ARGS
    own = pg_connect_args("postgresql://u@h/db?keepalives_idle=120&options=-c%20search_path%3Dhx",
                          connect_timeout=2, options="-c statement_timeout=5000")
    assert "keepalives_idle" not in own and own["keepalives_count"] == PG_CONNECT_ARGS["keepalives_count"]
    assert own["options"] == "-c search_path=hx -c statement_timeout=5000"
    assert own["connect_timeout"] == 2
    async_args = pg_connect_args_of_conninfo("host=h dbname=db keepalives_idle=120")
    assert "keepalives_idle" not in async_args and async_args["tcp_user_timeout"] == 30_000


@pytest.mark.postgres
def test_a_probe_connection_keeps_the_urls_search_path(pg_url: str) -> None:
    from sqlalchemy import create_engine, text

    url = make_url(pg_url).update_query_dict({"options": "-c search_path=helyx_probe_test,public"})
    engine = create_engine(url.set(drivername="postgresql+psycopg"))
    try:
        with probe(engine, 5_000).connect() as conn:
            assert conn.execute(text("SHOW search_path")).scalar_one() .replace(" ", "") == "helyx_probe_test,public"
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "5s"
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.anyio
async def test_options_with_a_space_reach_the_server_on_every_kind_of_connection(pg_url: str) -> None:
    """SQLAlchemy renders a space in a query value as `+`, which libpq does not decode: with the
    URL the README documents (`?options=-c%20search_path%3D...`), every direct psycopg connection
    (the event loop's pool, the jobs lock) was refused, and `helyx serve` would not start."""
    from sqlalchemy import text

    from common import jobs_lock
    from common.db import libpq_conninfo
    from common.pg_async import AsyncStatements

    url = make_url(pg_url).update_query_dict({"options": "-c search_path=helyx_probe_test,public"})
    assert "options='-c search_path=helyx_probe_test,public'" in libpq_conninfo(url)
    pool = AsyncStatements(libpq_conninfo(url), 1)
    try:
        [path] = await pool.first_row(text("SHOW search_path"), {}) or ("",)
        assert path.replace(" ", "") == "helyx_probe_test,public"
    finally:
        await pool.close_idle()
    held = jobs_lock.hold(url.render_as_string(hide_password=False), shared=True, holder="options test")
    try:
        assert held.execute("SHOW search_path").fetchone()[0].replace(" ", "") == "helyx_probe_test,public"  # type: ignore[index]
    finally:
        held.close()


def test_the_environments_pgoptions_are_kept_when_the_url_sets_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c search_path=hx")
    assert pg_connect_args("postgresql://u@h/db", options="-c statement_timeout=5000")["options"] == (
        "-c search_path=hx -c statement_timeout=5000")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_the_conninfo_has_the_parameters_sqlalchemys_own_connections_get() -> None:
    """A key both in the URL and in its query raised TypeError (serve would not start, a worker
    booted without its jobs lock), and several hosts were not split (a diff review)."""
    from common.db import libpq_conninfo

    assert libpq_conninfo("postgresql://postgres@localhost:5432/db?host=127.0.0.1") == (
        "host=127.0.0.1 dbname=db user=postgres port=5432")
    assert libpq_conninfo("postgresql://postgres@/db?host=h1:5432&host=h2:5433") == (
        "dbname=db user=postgres host=h1,h2 port=5432,5433")
    assert libpq_conninfo("postgresql://postgres:a%20b@127.0.0.1:5432/x?options=-c%20search_path%3Dhx") == (
        "host=127.0.0.1 dbname=x user=postgres password='a b' port=5432 options='-c search_path=hx'")


def test_a_worker_process_that_cannot_take_the_jobs_lock_stops_rather_than_run_without_it(
        tmp_path: Any) -> None:
    """Only JobsTaken stopped it: any other failure (an unreachable database as it booted, a URL
    the lock could not use) was logged by Dramatiq and the worker ran, taking jobs, without it."""
    import os
    import subprocess
    import sys

    boot = "from workers import boot, process_middleware; process_middleware.hold_jobs_lock()"  # as a worker boots
    with refusing_port() as port:
        env = {**os.environ, "HELYX_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/nowhere",
               "HELYX_REDIS_URL": "redis://127.0.0.1:6379/15", "HELYX_STORAGE_DIR": str(tmp_path)}
        ran = subprocess.run([sys.executable, "-c", boot], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 3, ran.stderr[-2000:]
    assert "cannot take the jobs lock" in ran.stderr + ran.stdout
