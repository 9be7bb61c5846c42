"""An amount of credits in a JSON body: exact to the micro-credit, as the command line reads it.

A JSON number arrives as a float; its shortest decimal form (`repr`) is what the caller wrote, so
that is what is checked and converted. Rounding it instead granted 1.000001 for 1.0000005 and
refused 0.0000001 as "not positive"."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, Field

from common.money import to_micro


def micro_of(credits: float) -> int:
    """The micro-credits of an amount as written; ValueError when finer than one micro-credit."""
    return to_micro(Decimal(repr(credits)))


def _exact(credits: float) -> float:
    try:
        micro_of(credits)
    except ValueError:
        raise ValueError("at most 6 decimals: one micro-credit is the smallest amount") from None
    return credits


CreditAmount = Annotated[float, Field(gt=0, le=10**9, allow_inf_nan=False), AfterValidator(_exact)]
