"""A streamed chat's client leaving at the points the other disconnect tests leave out, over a real
socket (uvicorn) on PostgreSQL with the fake OpenAI upstream: while the stream's settlement waits
for the account's row (a grant or plan change in progress), and while its reservation does; and a
plain call whose hold the sweeper expired while it ran. Each is settled once, charged what the
contract says, and leaves the books balanced with no hold open."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from common import billing
from tests.api.chat.helpers import Gateway, assert_books_balance, books, generation_row, hold_for, wait_for
from tests.conftest import TestAccount
from tests.fakes import Behaviour, FakeUpstream
from tests.integration.races_books import wait_for_a_lock_wait

pytestmark = pytest.mark.postgres
RATE = 200_000  # gpt-4o, micro-credits per token
MESSAGES = [{"role": "user", "content": "Count slowly."}]
BODY = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}

@pytest.fixture
def gw(upstream_gateway: Callable[..., Gateway], openai_fake: FakeUpstream, pg_url: str) -> Gateway:
    return upstream_gateway(openai=openai_fake, database_url=pg_url, upstream_retries=0)


def _account_locked(gw: Gateway, account: TestAccount) -> Any:
    """A transaction holding the account's row, as a grant or plan change does while it runs."""
    conn = gw.engine.connect()
    tx = conn.begin()
    conn.execute(text("SELECT 1 FROM accounts WHERE id = :a FOR UPDATE"), {"a": account.account_id})
    return conn, tx


def test_a_client_leaving_while_its_finished_stream_waits_to_be_settled_is_charged_once_in_full(
        gw: Gateway, openai_fake: FakeUpstream) -> None:
    """Every chunk was produced and sent; the settlement waits for the account's row; the client
    leaves before the last chunk (usage, helyx) and [DONE]. The settlement still runs to its end,
    once, at the upstream's usage: the answer was produced in full (SPEC 4: charged for what was
    produced)."""
    openai_fake.behaviour = Behaviour(chunks=[f"w{i} " for i in range(12)], chunk_delay=0.05,
                                      prompt_tokens=12, completion_tokens=9)
    account = gw.account("pro")
    before = books(gw.engine, account.account_id)
    seen: list[str] = []
    blocker = None
    with gw.http(account) as http, http.stream("POST", "/chat/completions", json=BODY) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                seen.append(line)
                if blocker is None:  # the hold is made and the stream under way: take the account's row
                    blocker = _account_locked(gw, account)
                if len(seen) == 12:  # every content chunk; the finish chunk waits for the settlement
                    break
        wait_for_a_lock_wait(gw.engine, 10.0)  # the settlement is waiting for the row
    # the client has gone; a moment for the server to notice, then the row is free
    time.sleep(0.5)
    assert blocker is not None
    blocker[1].rollback()
    blocker[0].close()

    generation_id = json.loads(seen[0][6:])["id"]
    record = wait_for(lambda: generation_row(gw.engine, generation_id), timeout=10.0)
    hold = hold_for(gw.engine, generation_id)
    assert record["status"] == "succeeded" and not record["usage_estimated"], record
    assert hold["status"] == "settled" and hold["charged"] == 21 * RATE == record["credits"], (hold, record)
    after = assert_books_balance(gw.engine, account.account_id)
    assert before.balance - after.balance == 21 * RATE
    with gw.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM ledger_entries WHERE reference = :r"),
                            {"r": f"resolve:{hold['id']}"}).scalar_one() == 1


def test_a_client_leaving_while_its_reservation_waits_for_the_account_is_charged_nothing(
        gw: Gateway, openai_fake: FakeUpstream) -> None:
    """The reservation waits for the account's row (nothing sent yet, not even the head); the
    client gives up. The reservation then goes through, the gateway notices the client is gone
    before the upstream's first chunk, cancels the call and charges nothing."""
    openai_fake.behaviour = Behaviour(chunks=[f"w{i} " for i in range(12)], chunk_delay=0.2, hang=0.3)
    account = gw.account("pro")
    with gw.http(account) as http:  # a first call, so the key takes the at-once path next
        http.post("/chat/completions", json={**BODY, "stream": False})
    before = books(gw.engine, account.account_id)
    conn, tx = _account_locked(gw, account)
    failure: list[BaseException] = []

    def client() -> None:
        try:
            with gw.http(account, timeout=1.0) as http:
                http.post("/chat/completions", json=BODY)
        except BaseException as exc:  # noqa: BLE001 - the read timeout, expected
            failure.append(exc)

    t = threading.Thread(target=client)
    t.start()
    t.join(10)
    assert failure, "the client was answered while the account was locked"
    tx.rollback()
    conn.close()

    def settled() -> str | None:
        with gw.engine.connect() as c:
            rows = c.execute(text("SELECT g.id FROM generations g WHERE g.account_id = :a AND g.stream"),
                             {"a": account.account_id}).all()
        return rows[0][0] if rows else None

    generation_id = wait_for(settled, timeout=10.0)
    record = generation_row(gw.engine, generation_id)
    hold = hold_for(gw.engine, generation_id)
    assert (record["status"], record["error_code"]) == ("cancelled", "client_disconnected"), record
    assert (hold["status"], hold["charged"]) == ("released", 0)
    after = assert_books_balance(gw.engine, account.account_id)
    assert after.balance == before.balance


def test_a_plain_call_whose_hold_the_sweeper_expired_mid_call_is_answered_and_charges_nothing_twice(
        gw: Gateway, openai_fake: FakeUpstream) -> None:
    """The call outlives its hold (its renewals could not reach the database, say) and the sweeper
    releases the hold; the late settlement finds it released: the answer goes out, charged 0, the
    generation records the 0, and the released credits are not charged on top."""
    openai_fake.behaviour = Behaviour(hang=3.0, prompt_tokens=12, completion_tokens=9)  # room for a busy CI
    account = gw.account("pro")
    before = books(gw.engine, account.account_id)
    answers: list[Any] = []

    def client() -> None:
        with gw.http(account, timeout=15) as http:
            answers.append(http.post("/chat/completions", json={**BODY, "stream": False}))

    t = threading.Thread(target=client)
    t.start()
    hold = wait_for(lambda: next(iter(
        [h for h in _holds(gw, account) if h["status"] == "open"]), None), timeout=5.0)
    with gw.engine.begin() as conn:
        conn.execute(text("UPDATE holds SET expires_at = 0 WHERE id = :h"), {"h": hold["id"]})
    assert billing.expire_holds(gw.engine) == 1
    t.join(15)
    [answer] = answers
    assert answer.status_code == 200, answer.text
    helyx = answer.json()["helyx"]
    assert helyx["credits_charged"] == 0
    record = generation_row(gw.engine, answer.json()["id"])
    assert record is not None and record["credits"] == 0 and record["status"] == "succeeded"
    after = assert_books_balance(gw.engine, account.account_id)
    assert after.balance == before.balance


def _holds(gw: Gateway, account: TestAccount) -> list[dict[str, Any]]:
    with gw.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM holds WHERE account_id = :a"),
                                              {"a": account.account_id}).mappings()]
