"""The 402 texts of the ledger's refusals: what a balance or a key's daily cap has left, and what
concurrent requests hold meanwhile (common.ledger raises them; billing and chat_billing word their
own with `held_note`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.errors import InsufficientCredits
from common.money import credits_text

if TYPE_CHECKING:
    from common.ledger import Balance


def cap_error(left: int, wanted: int) -> InsufficientCredits:
    return InsufficientCredits(
        f"This API key's daily credit cap has {credits_text(left)} credits left today; this request needs "
        f"{credits_text(wanted)}.", code="key_daily_cap_reached")


def insufficient_error(current: Balance, wanted: int) -> InsufficientCredits:
    return InsufficientCredits(
        f"Insufficient credits: this request needs {credits_text(wanted)} credits but "
        f"{credits_text(max(0, current.available))} are available{held_note(current)}.",
    )


def held_note(current: Balance) -> str:
    """What requests in progress hold, when they hold anything: "0 are available" alone read as a
    day's credits spent, while concurrent requests held them for a few seconds."""
    if current.held <= 0:
        return ""
    return (f" ({credits_text(current.held)} more are held for requests in progress, and come back, less what"
            " those are charged, as they finish)")
