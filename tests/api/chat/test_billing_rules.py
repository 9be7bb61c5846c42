"""SPEC §3's billing rules on the chat path, against the fake OpenAI upstream: shrinking an unset
max_tokens to the balance, 402 when even the prompt is unaffordable, charges capped by the hold,
failed calls free, a key's daily cap, and a settlement that meets a database outage
(test_upstream_failures_and_generations: the upstream's failures and the generation records)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, text

from common import billing
from common.billing import resets_at
from common.money import MICRO, to_credits
from common.tokens import estimate_prompt_tokens
from tests.api.chat.helpers import (
    Gateway,
    assert_books_balance,
    books,
    grant,
    hold_for,
    holds,
    leave_available,
    wait_for,
)
from tests.fakes import Behaviour, FakeUpstream

MESSAGES = [{"role": "user", "content": "Tell me about double-entry bookkeeping."}]
PROMPT = estimate_prompt_tokens(MESSAGES)
RATE = 200_000  # gpt-4o: 0.2 credits per token, in micro-credits
USAGE = 12 + 9  # the fake's default prompt + completion tokens
UpstreamGateway = Callable[..., Gateway]


def chat(http: httpx.Client, **body: object) -> httpx.Response:
    return http.post("/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES, **body})


def micro(credits: float | int) -> int:
    return int(Decimal(str(credits)) * MICRO)


def sse_events(response: httpx.Response) -> list[dict[str, object] | str]:
    events: list[dict[str, object] | str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def reserved_generation_ids(http: httpx.Client) -> list[str]:
    """Every chat call's id, newest first, as the account's own ledger (GET /usage) shows it:
    also the calls whose answer was an error."""
    entries = http.get("/usage", params={"limit": 500}).json()["data"]
    return [e["description"].removeprefix("chat:") for e in entries
            if e["kind"] == "reserve" and e["description"].startswith("chat:")]


# --- reservation ---------------------------------------------------------------------------------


def test_an_unset_max_tokens_shrinks_to_the_largest_the_balance_affords(gw: Gateway, openai_fake: FakeUpstream) -> None:
    account = gw.account()
    leave_available(gw.engine, account.account_id, (PROMPT + 500) * RATE + RATE - 1)
    with gw.http(account) as http:
        response = chat(http)
    assert response.status_code == 200, response.text
    assert openai_fake.last_request.json["max_tokens"] == 500
    hold = hold_for(gw.engine, response.json()["id"])
    assert hold["amount"] == (PROMPT + 500) * RATE
    assert hold["charged"] == USAGE * RATE == micro(response.json()["helyx"]["credits_charged"])
    assert_books_balance(gw.engine, account.account_id)


def test_an_unset_max_tokens_never_grows_past_the_default_when_room_is_made_meanwhile(
    gw: Gateway, openai_fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default hold fails on the balance; before the balance is read to shrink max_tokens,
    another call's hold is released. What the balance affords is then more than the default: the
    default it stays (it used to grow past it, and past what the caller would ever get)."""
    account = gw.account()
    default = gw.settings.default_max_tokens
    other = billing.reserve(gw.engine, account_id=account.account_id, key_id=None,
                            amount=books(gw.engine, account.account_id).available - (PROMPT + 10) * RATE,
                            purpose="another call", ttl=60, tz=gw.settings.timezone)
    balance = billing.balance

    def released_meanwhile(engine: Engine, account_id: str) -> Any:
        billing.release(engine, other)
        return balance(engine, account_id)

    monkeypatch.setattr(billing, "balance", released_meanwhile)
    with gw.http(account) as http:
        response = chat(http)
    assert response.status_code == 200, response.text
    assert openai_fake.last_request.json["max_tokens"] == default
    assert hold_for(gw.engine, response.json()["id"])["amount"] == (PROMPT + default) * RATE
    assert_books_balance(gw.engine, account.account_id)


def test_with_a_full_balance_an_unset_max_tokens_is_the_default(gw: Gateway, openai_fake: FakeUpstream) -> None:
    account = gw.account()
    with gw.http(account) as http:
        assert chat(http).status_code == 200
        assert chat(http, max_completion_tokens=77).status_code == 200
    first, second = list(openai_fake.requests)
    assert first.json["max_tokens"] == gw.settings.default_max_tokens
    assert second.json["max_tokens"] == 77


def test_when_even_the_prompt_is_unaffordable_it_is_402_and_no_upstream_is_called(
    gw: Gateway, openai_fake: FakeUpstream,
) -> None:
    account = gw.account()
    leave_available(gw.engine, account.account_id, (PROMPT + 1) * RATE - 1)
    before = assert_books_balance(gw.engine, account.account_id)
    with gw.http(account) as http:
        response = chat(http)
    assert response.status_code == 402
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("insufficient_quota", "messages")  # the prompt does not fit
    assert "cannot cover this prompt" in error["message"] and "resets at" in error["message"]
    # what the smallest answer needs (1 token), not the hold of the default max_tokens
    assert (f"that needs {to_credits((PROMPT + 1) * RATE)} credits, and {to_credits((PROMPT + 1) * RATE - 1)} are "
            "available") in error["message"], error
    assert response.headers["x-should-retry"] == "false"
    assert openai_fake.request_count == 0
    assert assert_books_balance(gw.engine, account.account_id) == before

    grant(gw.engine, account.account_id, 1)  # one micro-credit more: exactly one completion token fits
    with gw.http(account) as http:
        response = chat(http)
    assert response.status_code == 200
    assert openai_fake.last_request.json["max_tokens"] == 1
    assert hold_for(gw.engine, response.json()["id"])["amount"] == (PROMPT + 1) * RATE
    assert assert_books_balance(gw.engine, account.account_id).available == (PROMPT + 1 - USAGE) * RATE


def test_a_402_names_the_limit_as_the_caller_did(gw: Gateway, openai_fake: FakeUpstream) -> None:
    account = gw.account()
    leave_available(gw.engine, account.account_id, (PROMPT + 179) * RATE)
    with gw.http(account) as http:
        response = chat(http, max_completion_tokens=1000)
    error = response.json()["error"]
    assert (response.status_code, error["param"]) == (402, "max_completion_tokens"), error
    assert error["message"].startswith("The balance affords at most max_completion_tokens=179 for this prompt, "
                                       "not 1000."), error
    assert openai_fake.request_count == 0


def test_the_charge_never_exceeds_the_hold_even_when_the_upstream_reports_more(
    gw: Gateway, openai_fake: FakeUpstream,
) -> None:
    openai_fake.behaviour.prompt_tokens, openai_fake.behaviour.completion_tokens = 5_000, 3_000
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http:
        response = chat(http, max_tokens=10)
    assert response.status_code == 200
    hold = hold_for(gw.engine, response.json()["id"])
    assert hold["amount"] == (PROMPT + 10) * RATE
    assert hold["charged"] == hold["amount"] == micro(response.json()["helyx"]["credits_charged"])
    after = assert_books_balance(gw.engine, account.account_id)
    assert before.balance - after.balance == hold["amount"]


def test_a_keys_daily_cap_bounds_its_chats_and_refuses_past_it(gw: Gateway) -> None:
    """A capped key takes the transactional path (on PostgreSQL too): its holds count against the cap."""
    account = gw.account()
    hold = (PROMPT + 10) * RATE
    with gw.http(account) as http:
        created = http.post("/keys", json={"name": "capped", "daily_credit_cap": hold / MICRO})
    assert created.status_code == 201, created.text
    capped = created.json()["key"]
    with httpx.Client(base_url=gw.api, headers={"Authorization": f"Bearer {capped}"}, trust_env=False) as http:
        first = chat(http, max_tokens=10)
        assert first.status_code == 200, first.text
        before = books(gw.engine, account.account_id)
        second = chat(http, max_tokens=10)
    assert (second.status_code, second.json()["error"]["code"]) == (402, "key_daily_cap_reached")
    left = hold - USAGE * RATE
    # what the prompt and one token need, not the hold of the max_tokens asked for (found by a README walkthrough)
    assert second.json()["error"]["message"] == (
        f"This key's daily credit cap cannot cover this prompt (up to {PROMPT} tokens) and one token of answer: "
        f"that needs {to_credits((PROMPT + 1) * RATE)} credits, and {to_credits(left)} are available. The key's "
        f"daily cap and the daily allowance reset at {resets_at(gw.settings.timezone)}.")
    assert second.json()["error"]["param"] == "messages"
    assert hold_for(gw.engine, first.json()["id"])["charged"] == USAGE * RATE
    assert assert_books_balance(gw.engine, account.account_id) == before


def test_the_prompts_402_says_what_requests_in_progress_hold(gw: Gateway, openai_fake: FakeUpstream) -> None:
    """Concurrent calls of the account hold credits for a few seconds: "0 are available" alone read
    as a day's credits spent (found by an SDK-breadth review)."""
    account = gw.account()
    leave_available(gw.engine, account.account_id, (PROMPT + 100) * RATE)
    billing.reserve(gw.engine, account_id=account.account_id, key_id=None, amount=100 * RATE, purpose="chat:other",
                    ttl=60, tz=gw.settings.timezone)  # another call of the account, still running
    with gw.http(account) as http:
        response = chat(http)
    error = response.json()["error"]
    assert (response.status_code, error["param"]) == (402, "messages"), error
    assert (f"and {to_credits(PROMPT * RATE)} are available ({to_credits(100 * RATE)} more are held for requests in "
            "progress, and come back, less what those are charged, as they finish).") in error["message"], error
    assert openai_fake.request_count == 0


def test_an_unset_max_tokens_shrinks_to_what_a_keys_daily_cap_still_allows(
        gw: Gateway, openai_fake: FakeUpstream) -> None:
    """SPEC §3's shrink applies to whichever is smaller, the balance or the key's remaining cap;
    only a cap that cannot cover even the prompt is a 402 (naming the cap, not the balance)."""
    account = gw.account()
    with gw.http(account) as http:
        created = http.post("/keys", json={"name": "capped", "daily_credit_cap": (PROMPT + 30) * RATE / MICRO})
    capped = created.json()["key"]
    with httpx.Client(base_url=gw.api, headers={"Authorization": f"Bearer {capped}"}, trust_env=False) as http:
        asked_too_much = chat(http, max_tokens=100)  # the cap has room, not for that much
        assert asked_too_much.status_code == 402
        assert asked_too_much.json()["error"]["message"].startswith(
            "This key's daily credit cap affords at most max_tokens=30 for this prompt, not 100. This API key's "
            f"daily credit cap has {to_credits((PROMPT + 30) * RATE)} credits left today; this request needs "
            f"{to_credits((PROMPT + 100) * RATE)}.")  # not "has reached its cap"
        assert asked_too_much.json()["error"]["param"] == "max_tokens"
        first = chat(http)
        assert first.status_code == 200, first.text
        assert openai_fake.last_request.json["max_tokens"] == 30
        assert hold_for(gw.engine, first.json()["id"])["amount"] == (PROMPT + 30) * RATE
        second = chat(http)  # the first was charged its 21 tokens: the cap allows the prompt + 9 more
        assert second.status_code == 200 and openai_fake.last_request.json["max_tokens"] == 30 - USAGE
        before = books(gw.engine, account.account_id)
        refused = chat(http)  # the prompt - 12 tokens left
    error = refused.json()["error"]
    assert (refused.status_code, error["code"]) == (402, "key_daily_cap_reached")
    assert error["message"].startswith("This key's daily credit cap cannot cover this prompt"), error
    assert error["param"] == "messages"
    assert assert_books_balance(gw.engine, account.account_id) == before


def test_on_postgresql_the_money_statements_run_on_the_event_loop(gw: Gateway) -> None:
    services = gw.app.state.services
    account = gw.account()
    with gw.http(account) as http:
        assert chat(http, max_tokens=10).status_code == 200
    if gw.settings.is_sqlite:
        assert services.pg is None
    else:  # the lookup, the hold and the settlement used the loop's pool, which kept its connection
        assert services.pg is not None and services.pg.idle_count >= 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_reservation_lost_by_a_database_crash_charges_nothing_and_says_so(
    gw: Gateway, openai_fake: FakeUpstream, stream: bool,
) -> None:
    """A chat reservation commits without waiting for the WAL flush (common.ledger_pg): a
    PostgreSQL crash can lose it while the upstream call runs. Simulated here by removing the
    hold, its ledger row and the account's held amount in one transaction, as if the reserve had
    never committed: the settlement finds no hold and nothing is charged. A plain call answers
    503; a stream, whose 200 and chunks have gone out, ends with an error event (no [DONE])."""
    openai_fake.behaviour = Behaviour(chunk_delay=0.15) if stream else Behaviour(hang=0.6)
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with ThreadPoolExecutor(1) as pool, gw.http(account) as http:
        pending = pool.submit(chat, http, stream=stream)
        hold = wait_for(lambda: _open_hold(gw.engine, account.account_id))
        with gw.engine.begin() as conn:
            conn.execute(text("DELETE FROM ledger_entries WHERE hold_id = :h"), {"h": hold["id"]})
            conn.execute(text("DELETE FROM holds WHERE id = :h"), {"h": hold["id"]})
            conn.execute(text("UPDATE accounts SET held = held - :a WHERE id = :id"),
                         {"a": hold["amount"], "id": account.account_id})
        response = pending.result(timeout=30)
    if stream:
        assert response.status_code == 200
        events = sse_events(response)
        assert any(isinstance(e, dict) and e.get("choices") for e in events)  # the content went out first
        last = events[-1]
        assert isinstance(last, dict) and last["error"]["code"] == "service_unavailable", events[-2:]
        assert last["helyx"] == {"credits_charged": 0} and "[DONE]" not in events
        error = last["error"]
    else:
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "service_unavailable"
    assert "nothing was charged" in error["message"]
    after = assert_books_balance(gw.engine, account.account_id)
    assert (after.balance, after.entries) == (before.balance, before.entries)


def _settlement_unreachable(monkeypatch: pytest.MonkeyPatch, commit_first: Gateway | None = None) -> None:
    """The database answers no settlement for longer than the patience; with `commit_first`, the
    first one commits before the reply is lost."""
    from api import chat_call

    settle, tries = chat_call.ChatCall._settle_hold, []

    async def unreachable(self: Any, outcome: Any, stream: bool) -> None:
        tries.append(outcome)
        if commit_first is not None and len(tries) == 1:
            await settle(self, outcome, stream)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(chat_call, "SETTLE_PATIENCE_SECONDS", 0.2)
    monkeypatch.setattr(chat_call.ChatCall, "_settle_hold", unreachable)


@pytest.mark.parametrize("committed", [False, True], ids=["not committed", "committed, reply lost"])
def test_a_stream_whose_settlement_meets_a_database_outage_ends_saying_the_charge_is_unconfirmed(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, committed: bool,
) -> None:
    """The database is unreachable at a stream's settlement for longer than its patience: the
    stream (already 200, chunks sent) ends with an error event that says the charge could not be
    confirmed and where to look, never that nothing was charged: the settlement may have committed
    before its reply was lost. Not committed, the hold stays open, to be released at its expiry."""
    _settlement_unreachable(monkeypatch, commit_first=gw if committed else None)
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http:
        response = chat(http, stream=True)
        events = sse_events(response)
        last = events[-1]
        assert response.status_code == 200 and "[DONE]" not in events
        assert isinstance(last, dict) and last["error"]["code"] == "charge_unconfirmed", events[-2:]
        generation_id = last["helyx"]["generation_id"]
        assert last["helyx"] == {"credits_charged": None, "generation_id": generation_id}
        assert f"/api/v1/generations/{generation_id}" in last["error"]["message"]
        assert "nothing was charged" not in last["error"]["message"]
        record = http.get(f"/generations/{generation_id}")
    after = assert_books_balance(gw.engine, account.account_id, open_holds=0 if committed else 1)
    if committed:
        assert record.status_code == 200
        assert micro(record.json()["credits_charged"]) == before.balance - after.balance > 0
    else:
        assert record.status_code == 404 and after.held > 0 and after.balance == before.balance


def test_a_completion_whose_settlement_meets_a_database_outage_is_a_503_not_to_retry(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same outage on a plain completion: a 503 `charge_unconfirmed` the SDK does not retry
    (a retry would be a second call, perhaps charged twice), naming the generation to look at."""
    _settlement_unreachable(monkeypatch)
    account = gw.account()
    with gw.http(account) as http:
        response = chat(http)
    error = response.json()["error"]
    assert (response.status_code, error["code"], response.headers["x-should-retry"]) == (
        503, "charge_unconfirmed", "false"), response.text
    assert "/api/v1/generations/" in error["message"]
    assert assert_books_balance(gw.engine, account.account_id, open_holds=1).held > 0


def test_a_stream_that_outlives_its_holds_ttl_keeps_the_hold_and_is_charged(
    make_gateway: Callable[..., Gateway], database: dict[str, str],
) -> None:
    """The sweeper releases holds past their expiry (a crashed process's); a call still running
    moves its hold's expiry on, so a long stream is settled and charged, not made free."""
    # A 2 s TTL renewed every 0.67 s: a renewal may come 1.3 s late (a loaded CI machine) before the
    # sweeper, every 0.1 s, would find the hold expired
    gw = make_gateway(hold_ttl_seconds=2, hold_sweep_interval_seconds=0.1, simulated_chat_delay=0.5, **database)
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http:
        started = time.monotonic()
        response = http.post("/chat/completions", json={
            "model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper and the sea."}]})
        events = sse_events(response)
        lasted = time.monotonic() - started
    assert lasted > 5.0, lasted  # well past the 2 s TTL and many sweeps
    final = events[-2]
    assert isinstance(final, dict) and events[-1] == "[DONE]", events[-2:]
    charged = final["helyx"]["credits_charged"]
    assert charged == final["usage"]["total_tokens"] * 0.2 > 0
    assert final["helyx"]["credits_remaining"] == (before.available - micro(charged)) / MICRO
    assert [h["status"] for h in holds(gw.engine, account.account_id)] == ["settled"]
    assert before.balance - assert_books_balance(gw.engine, account.account_id).balance == micro(charged)


def _open_hold(engine: Engine, account_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT id, amount FROM holds WHERE account_id = :a AND status = 'open'"),
                           {"a": account_id}).mappings().first()
    return dict(row) if row else None
