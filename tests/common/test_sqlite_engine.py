"""The self-contained mode's SQLite engine: WAL, and every commit on the disk before it returns
(synchronous=FULL: NORMAL can lose answered commits to a power cut), on every pooled connection."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from common.db import make_engine

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
