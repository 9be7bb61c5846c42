"""Credits shown as JSON numbers are the exact micro-credit amounts, up to the most an account holds."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from common.money import MAX_BALANCE_MICRO, MICRO, credits_text, to_credits, to_micro


@pytest.mark.parametrize("micro", [0, 1, 999_999, MICRO, 123_456_789_012, MAX_BALANCE_MICRO - 1, MAX_BALANCE_MICRO,
                                   MAX_BALANCE_MICRO - 987_654, 987_654_321_123_457])
def test_every_amount_up_to_the_most_an_account_holds_reads_back_exactly_from_json(micro: int) -> None:
    shown = json.loads(json.dumps(to_credits(micro)))
    assert to_micro(Decimal(repr(shown))) == micro


def test_past_it_a_json_number_would_lose_the_last_decimal() -> None:
    """Why the balance is bounded (common.ledger.grant): 16 significant digits no longer read back."""
    micro = 10 * MAX_BALANCE_MICRO + 1
    assert to_micro(Decimal(repr(json.loads(json.dumps(to_credits(micro)))))) != micro


def test_balances_past_the_grant_ceiling_still_read_back_exactly_from_json() -> None:
    """An upgrade may take a full account 25,000 credits past the billion a grant stops at."""
    for micro in (1_000_025_000_999_999, 1_000_023_999_999_999, 2**31 * MICRO - 1, 1_999_999_999_999_999):
        assert Decimal(json.dumps(to_credits(micro))) * MICRO == micro


@pytest.mark.parametrize(("micro", "shown"), [(13, "0.000013"), (1, "0.000001"), (10 * MICRO, "10"),
                                              (1_500_000, "1.5"), (0, "0"), (MAX_BALANCE_MICRO, "1000000000")])
def test_amounts_in_a_sentence_are_plain_decimals(micro: int, shown: str) -> None:
    """A 402's text read "1.3e-05 are available"."""
    assert credits_text(micro) == shown
