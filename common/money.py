"""Exact credit arithmetic. Balances are integers of micro-credits; no float is ever summed.

One credit is 1,000,000 micro-credits, so a rate of 0.04 credits per token is exactly 40,000
micro-credits per token. Credits are shown to users as JSON numbers with up to six decimals.
"""

from __future__ import annotations

import re
from decimal import Decimal

MICRO = 1_000_000
# An amount written as a plain decimal (ASCII digits: \d takes any script's): Decimal also reads
# `1_0000` (10,000: a typo) and `1e3`, which an operator's amount or price is never meant to be.
PLAIN_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")
# The most a grant takes an account to (allowance + top-up): a billion credits; a plan's allowance
# may add up to 25,000 more. Below 2^31 credits a double's spacing is under half a micro-credit, so
# every balance there reads back exactly from a JSON number, and repeated grants can never overflow
# the BIGINT columns (at about 9.2 trillion credits).
MAX_BALANCE_MICRO = 10**9 * MICRO


def to_micro(credits: Decimal | int | str) -> int:
    """Credits to micro-credits; refuses values finer than one micro-credit."""
    value = Decimal(str(credits)) * MICRO
    if value != value.to_integral_value():
        shown = f"{credits:f}" if isinstance(credits, Decimal) else credits  # 0.0000001, not 1E-7
        raise ValueError(f"{shown} credits is finer than one micro-credit")
    return int(value)


def credits_text(micro: int) -> str:
    """Micro-credits as a plain decimal for a sentence ("0.000013", "10", "1.5"): a float there
    read "1.3e-05"."""
    return format(Decimal(micro) / MICRO, "f")


def to_credits(micro: int) -> int | float:
    """Micro-credits to a JSON number: an int when whole, else a float rounded to 6 places.

    Only for display: the float is made once from the exact integer, never accumulated."""
    if micro % MICRO == 0:
        return micro // MICRO
    return float(Decimal(micro) / MICRO)
