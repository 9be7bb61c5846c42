"""The ledger's ids on PostgreSQL are 64-bit (migration 0004): past 2^31 rows the movements of
credits go on. With a 32-bit id every reserve, settle and grant failed once its sequence ran out."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from common import billing
from tests.conftest import create_test_account

TZ = "UTC"

pytestmark = pytest.mark.postgres


def test_ledger_rows_go_on_past_the_32_bit_limit(pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "free", tz=TZ)
    with pg_engine.begin() as conn:
        conn.execute(text("SELECT setval('ledger_entries_id_seq', 2147483646)"))
    before = billing.available(pg_engine, account.account_id)
    hold = billing.reserve(pg_engine, account_id=account.account_id, key_id=account.key_id, amount=1_000_000,
                           purpose="test:big-ids", ttl=60, tz=TZ)
    billing.settle(pg_engine, hold, 400_000)
    with pg_engine.connect() as conn:
        ids = conn.execute(text("SELECT id FROM ledger_entries WHERE account_id = :a ORDER BY id"),
                           {"a": account.account_id}).scalars().all()
        kind = conn.execute(text("SELECT data_type FROM information_schema.columns "
                                 "WHERE table_name = 'ledger_entries' AND column_name = 'id'")).scalar_one()
    assert kind == "bigint"
    assert max(ids) > 2**31 - 1
    assert billing.available(pg_engine, account.account_id) == before - 400_000
