"""The self-contained mode's SQLite engine: WAL, and every commit on the disk before it returns
(synchronous=FULL: NORMAL can lose answered commits to a power cut), on every pooled connection."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import text

from common.db import make_engine, reader

FULL = 2


def test_every_connection_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'helyx.db'}")
    try:
        for _ in range(2):
            with engine.connect() as conn:
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                assert conn.execute(text("PRAGMA synchronous")).scalar() == FULL
            engine.dispose()  # the next one is a new connection
    finally:
        engine.dispose()


def test_a_readers_transaction_takes_no_write_lock(tmp_path: Path) -> None:
    """Every transaction began IMMEDIATE: a /metrics scrape's table scans (a second on two million
    generations) held every reservation and settlement up for as long (a self-contained review).
    A reader() transaction now reads beside the writer, from its own snapshot."""
    engine = make_engine(f"sqlite:///{tmp_path / 'helyx.db'}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (v INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        wrote = threading.Event()

        def write() -> None:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (2)"))
            wrote.set()

        with reader(engine).connect() as scan:
            assert scan.execute(text("SELECT COUNT(*) FROM t")).scalar() == 1  # its transaction is open
            writer = threading.Thread(target=write)
            writer.start()
            assert wrote.wait(5), "the write waited for the reader's transaction"
            assert scan.execute(text("SELECT COUNT(*) FROM t")).scalar() == 1  # its snapshot
        writer.join(5)
        with reader(engine).connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM t")).scalar() == 2
    finally:
        engine.dispose()
