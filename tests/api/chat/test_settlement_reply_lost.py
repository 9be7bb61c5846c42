"""A chat whose settlement committed but whose reply was lost: the retried settlement finds it
done, and the call is answered as charged, even when what is left of the balance cannot be read
then (it was a 503 the SDK retried, a second call charged again, or, streamed, an error event
saying nothing was charged: an SDK retry hunt)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.api.chat.helpers import Gateway, assert_books_balance, books
from tests.api.chat.test_billing_rules import chat, micro, sse_events


@pytest.mark.parametrize("stream", [False, True])
def test_a_charge_confirmed_after_a_lost_reply_is_answered_though_the_balance_cannot_be_read(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, stream: bool,
) -> None:
    from api import chat_call

    settle, tries = chat_call.ChatCall._settle_hold, []

    async def reply_lost_once(self: Any, outcome: Any, stream: bool) -> Any:
        tries.append(outcome)
        done = await settle(self, outcome, stream)
        if len(tries) == 1:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return done

    def unreadable(*args: Any, **kwargs: Any) -> int:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(chat_call.ChatCall, "_settle_hold", reply_lost_once)
    monkeypatch.setattr(chat_call.billing, "available", unreadable)
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http:
        response = chat(http, stream=stream)
        if stream:
            events = sse_events(response)
            assert events[-1] == "[DONE]", events[-3:]
            helyx: Any = next(e["helyx"] for e in reversed(events) if isinstance(e, dict) and "helyx" in e)
        else:
            assert response.status_code == 200, response.text
            helyx = response.json()["helyx"]
    after = assert_books_balance(gw.engine, account.account_id)
    assert len(tries) >= 2 and helyx["credits_remaining"] is None
    assert micro(helyx["credits_charged"]) == before.balance - after.balance > 0  # charged once
