"""The options every PostgreSQL connection is opened with (common.db.pg_connect_args) leave what
the database URL sets to the URL: an operator's `?options=-c search_path=...` reached the main
pools but not /metrics' own connections, which then read another schema's tables (a diff review)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from common.db import PG_CONNECT_ARGS, pg_connect_args, probe
from common.pg_async import pg_connect_args_of_conninfo


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
