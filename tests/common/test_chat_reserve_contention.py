"""common.chat_billing.reserve_chat when every hold it tries is refused although the balance read
after each would have taken it: other requests of the same account held and released meanwhile
(a diff review). The 402 said "affords at most max_tokens=100 ..., not 100", or without max_tokens
"needs 2.2 credits, and 1,000 are available"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from common import accounts, billing, chat_billing, clock
from common.catalog import load_catalog
from common.errors import InsufficientCredits
from tests.conftest import TEST_TZ, create_test_account, make_settings


@pytest.mark.parametrize("max_tokens", [100, None], ids=["max_tokens set", "max_tokens unset"])
def test_holds_refused_while_the_balance_has_room_say_so(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_tokens: int | None) -> None:
    account = create_test_account(engine, "pro")
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    entry = load_catalog(make_settings(tmp_path)).get("gpt-4o")
    tries: list[int] = []

    def taken_first(engine: Engine, **hold: Any) -> str:  # another request took the room a moment before
        tries.append(hold["amount"])
        raise InsufficientCredits("Insufficient credits: this request needs 1 credits but 0 are available.")

    monkeypatch.setattr(billing, "reserve", taken_first)
    with pytest.raises(InsufficientCredits) as refused:
        chat_billing.reserve_chat(engine, principal, entry, prompt_estimate=10, max_tokens=max_tokens,
                                  default_max_tokens=100, purpose="chat:contention", ttl=60, tz=TEST_TZ)
    message = refused.value.message
    assert len(tries) == 3  # tried again each time the room read afterwards allowed it
    assert "affords at most" not in message and "cannot cover this prompt" not in message, message
    assert "Other requests of this account are holding credits at the same moment; try again." in message
    assert "The daily allowance resets at" in message
    assert refused.value.param is None
