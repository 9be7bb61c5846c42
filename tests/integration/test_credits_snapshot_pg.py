"""GET /credits on PostgreSQL reads the balance and the day's charges from one snapshot."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from common import billing, reports
from common.money import MICRO
from tests.conftest import TEST_TZ, create_test_account

pytestmark = pytest.mark.postgres


def test_a_settlement_between_the_two_reads_is_in_both_or_in_neither(pg_engine: Engine,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """In autocommit, a settlement committed between them was counted in used_today but not in the
    allowance or the holds (a review saw 155 of 873 polls contradict themselves under load)."""
    account = create_test_account(pg_engine, "ultra")
    hold_id = billing.reserve(pg_engine, account_id=account.account_id, key_id=account.key_id, amount=7 * MICRO,
                              purpose="t", ttl=60, tz=TEST_TZ)
    read_balance = reports.ledger.balance

    def balance_then_a_settlement(conn: Any, account_id: str) -> Any:
        seen = read_balance(conn, account_id)
        billing.settle(pg_engine, hold_id, 7 * MICRO)  # another request's, committed meanwhile
        return seen

    monkeypatch.setattr(reports.ledger, "balance", balance_then_a_settlement)
    summary = reports.credits_summary(pg_engine, account.account_id, TEST_TZ)
    assert (summary["used_today"], summary["held"], summary["allowance_remaining"]) == (0, 7, 25_000)
    monkeypatch.undo()
    after = reports.credits_summary(pg_engine, account.account_id, TEST_TZ)
    assert (after["used_today"], after["held"], after["allowance_remaining"]) == (7, 0, 24_993)
