"""The options every PostgreSQL connection is opened with (common.db.pg_connect_args) leave what
the database URL sets to the URL: an operator's `?options=-c search_path=...` reached the main
pools but not /metrics' own connections, which then read another schema's tables (a diff review)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from common.db import PG_CONNECT_ARGS, pg_connect_args, pg_connect_args_of_conninfo, probe


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
