"""The engine, built once per process, and the schema check.

SQLite (the self-contained default) runs in WAL mode and every transaction starts with
`BEGIN IMMEDIATE`, so two writers never deadlock upgrading a read lock. PostgreSQL runs through
psycopg 3; a plain `postgresql://` URL is taken to mean it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from common.pg_liveness import replace_dropped_on_checkout

CONNECT_TIMEOUT_SECONDS = 5  # a new PostgreSQL connection, every pool (common.pg_async too)
# libpq's options for every pooled PostgreSQL connection (common.pg_statements and common.pg_async
# too): a new one fails in seconds on a host that drops packets (not at the OS's TCP timeout, minutes),
# and an open one that the network cut off is found dead within a minute (keepalives when idle, and
# tcp_user_timeout for a statement sent and never acknowledged) instead of ~15 minutes of waiting.
# (A server that is up but frozen still acknowledges: the API's statements have a deadline of their
# own, common.pg_async.)
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT_SECONDS, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
    "keepalives_count": 3, "tcp_user_timeout": 30_000,
}


def pg_connect_args(url: str | URL, **overrides: Any) -> dict[str, Any]:
    """PG_CONNECT_ARGS under what the database URL itself sets (an operator's `?keepalives_idle=120`
    wins: a driver's keyword arguments would override it), then `overrides`; an `options` override
    is added to the URL's own (its `-c search_path=...` kept)."""
    query = (make_url(normalize_url(url)) if isinstance(url, str) else url).query
    args = {name: value for name, value in PG_CONNECT_ARGS.items() if name not in query}
    for name, value in overrides.items():
        if name == "options":  # added to the URL's own, else to the environment's (libpq's PGOPTIONS)
            own = query.get("options") or os.environ.get("PGOPTIONS", "")
            own = own if isinstance(own, str) else " ".join(own)
            value = f"{own} {value}".strip()
        args[name] = value
    return args

_engines: dict[str, Engine] = {}


def normalize_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def pg_connect_args_of_conninfo(conninfo: str) -> dict[str, Any]:
    """PG_CONNECT_ARGS but those the connection string sets itself (psycopg's keyword arguments
    would override them), as pg_connect_args does for a URL."""
    given = conninfo_to_dict(conninfo)
    return {name: value for name, value in PG_CONNECT_ARGS.items() if name not in given}


def libpq_conninfo(url: str | URL) -> str:
    """A PostgreSQL URL (SQLAlchemy's, with its driver) as a libpq connection string, for psycopg
    directly, with exactly the parameters SQLAlchemy's own psycopg connections get (its dialect
    makes them: the query's host, port or user win over the URL's, several hosts are split).
    Rendering the URL again did not: a space in a query value became `+`, which libpq does not
    decode (`?options=-c%20search_path%3Dx` was refused), and a password's space went raw."""
    parsed = make_url(normalize_url(url)) if isinstance(url, str) else url
    parsed = parsed.set(drivername="postgresql+psycopg")
    args, params = parsed.get_dialect()().create_connect_args(parsed)
    return make_conninfo(*args, **{name: value for name, value in params.items() if value is not None})


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        pool_timeout=10,
        connect_args=pg_connect_args(url),  # a request then gets its 503, a stopping worker its fallback
    )
    replace_dropped_on_checkout(engine)
    return engine


def _unicode_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class DatabaseUnusable(RuntimeError):
    """The database cannot be opened where its URL points (a SQLite file whose directory cannot be made)."""


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file where a directory of the path should be, no permission
            raise DatabaseUnusable(f"the directory of the SQLite file {database} cannot be made: "
                                   f"{exc.strerror or exc}") from exc
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit reaches the disk before anyone is told (NORMAL, in WAL mode, can lose
        # the last commits to a power cut or an OS crash: a settlement, a grant, a 202's job row).
        # ~0.3 ms per commit here; PostgreSQL is the shape for load.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        # SQLite's own lower() folds ASCII only: this one folds as PostgreSQL's does (common.accounts)
        dbapi_connection.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE: a transaction that writes takes the write lock at once (one that read first and
        # then upgraded could fail with SQLITE_BUSY whatever the busy timeout). A reader's (reader())
        # takes none: in WAL mode it reads beside the writer instead of holding every write up.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


def reader(engine: Engine) -> Engine:
    """The engine for reads (never a write through it): on PostgreSQL in autocommit, which saves
    the BEGIN and ROLLBACK round trips around each statement (two of three on a hot-path lookup); on
    SQLite with a plain BEGIN, which takes no write lock (every transaction here otherwise begins
    IMMEDIATE: a /metrics scrape's table scans held every reservation and settlement up, a second
    per scrape on a table of two million generations)."""
    # Kept on the engine itself: a cache keyed by id(engine) handed a new engine, given the id of
    # one garbage-collected, the reader of the old one (another database; many engines come and go
    # in the tests).
    cached: Engine | None = getattr(engine, "_helyx_reader", None)
    if cached is None:
        options = {"isolation_level": "AUTOCOMMIT"} if engine.dialect.name == "postgresql" else {_READ_ONLY: True}
        cached = engine.execution_options(**options)
        engine._helyx_reader = cached  # type: ignore[attr-defined]
    return cached


_READ_ONLY = "helyx_read_only"
PROBE_CONNECT_SECONDS = 2
READY_STATEMENT_MS = 5_000  # the readiness check's SELECT 1
METRICS_STATEMENT_MS = 30_000  # the /metrics collector's scans (a scrape gives up at 10 s by default)


def probe(engine: Engine, statement_ms: int) -> Engine:
    """The engine for the readiness check and the /metrics collector's reads: on PostgreSQL a
    new connection each time (no pool), opened within PROBE_CONNECT_SECONDS and each statement
    limited by the server to `statement_ms`. A pooled connection to a server that stopped
    answering waited for ever (and /readyz with it, where it must say 503); a new one fails its
    handshake in seconds. Their callers take one at a time (common.health, common.metrics), so
    anonymous probes cannot open many. Elsewhere, the reader."""
    if not is_postgres(engine):
        return reader(engine)
    probes: dict[int, Engine] = engine.__dict__.setdefault("_helyx_probes", {})
    if statement_ms not in probes:
        probes[statement_ms] = create_engine(
            engine.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
            connect_args=pg_connect_args(engine.url, connect_timeout=PROBE_CONNECT_SECONDS,
                                         options=f"-c statement_timeout={statement_ms}"))
    return probes[statement_ms]


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def get_engine(url: str) -> Engine:
    """The process-wide engine for `url` (created on first use)."""
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = make_engine(url)
    return engine


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
