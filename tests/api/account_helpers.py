"""What the account and key route tests share: a fixed noon, an account's key ids."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, text

NOON = datetime(2031, 3, 10, 12, 0, tzinfo=UTC)  # in the future: a real-clock hold sweeper leaves our holds alone


def key_ids(engine: Engine, account_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM api_keys WHERE account_id = :a ORDER BY created_at"),
                                 {"a": account_id}).scalars())
