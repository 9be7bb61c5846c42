"""A client that goes away mid-stream, over a real socket: charged for what was produced and no
more, the hold resolved at once, the generation recorded `cancelled`, the upstream closed."""

from __future__ import annotations

import gc
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from api.app import create_app
from api.sse import EventStreamResponse
from common.db import get_engine
from common.migrate import upgrade
from common.money import MICRO
from common.providers.simulated import simulated_prompt_tokens, simulated_tokens
from common.tokens import estimate_used_prompt_tokens
from tests.api.chat.helpers import (
    Gateway,
    GatewayFactory,
    assert_books_balance,
    books,
    generation_row,
    hold_for,
    wait_for,
)
from tests.conftest import TestAccount, create_test_account, make_settings
from tests.fakes import Behaviour, FakeUpstream

MESSAGES = [{"role": "user", "content": "Write me a very long story about a lighthouse."}]
BODY = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}
RATE = 200_000  # gpt-4o, micro-credits per token
UpstreamGateway = Callable[..., Gateway]


def read_then_hang_up(gw: Gateway, account: TestAccount, events: int, body: dict[str, Any] = BODY,
                      received: list[str] | None = None) -> str:
    """Open a stream, read `events` SSE events, close the connection; returns the call's id (and
    appends the text the events carried to `received`)."""
    with gw.http(account) as http, http.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        seen: list[dict[str, Any]] = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if len(seen) == events:
                    break
    if received is not None:
        received.extend(c["choices"][0]["delta"].get("content") or "" for c in seen if c.get("choices"))
    return str(seen[0]["id"])


def assert_cancelled_and_settled(gw: Gateway, account: TestAccount, generation_id: str, before_balance: int) -> None:
    started = time.monotonic()
    record = wait_for(lambda: generation_row(gw.engine, generation_id), timeout=3.0)
    assert time.monotonic() - started < 2.5
    assert record["status"] == "cancelled" and record["error_code"] == "client_disconnected"
    assert record["stream"] and record["usage_estimated"]
    hold = hold_for(gw.engine, generation_id)
    assert hold["status"] == "settled"
    assert 0 < hold["charged"] < hold["amount"]
    assert record["credits"] == hold["charged"]
    after = assert_books_balance(gw.engine, account.account_id)  # no hold left open, entries sum up
    assert before_balance - after.balance == hold["charged"]
    with gw.http(account) as http:
        seen = http.get(f"/generations/{generation_id}").json()
    assert seen["status"] == "cancelled"
    assert Decimal(str(seen["credits_charged"])) * MICRO == hold["charged"]


def test_a_client_leaving_mid_stream_is_charged_for_what_was_produced(
    upstream_gateway: UpstreamGateway, openai_fake: FakeUpstream, database: dict[str, str],
) -> None:
    openai_fake.behaviour = Behaviour(chunks=[f"word{i} " for i in range(400)], chunk_delay=0.01)
    gw = upstream_gateway(openai=openai_fake, **database)
    account = gw.account()
    before = books(gw.engine, account.account_id)

    generation_id = read_then_hang_up(gw, account, events=5)

    assert_cancelled_and_settled(gw, account, generation_id, before.balance)
    assert wait_for(lambda: openai_fake.streams_closed == 1, timeout=2.0)
    assert openai_fake.streams_opened == 1 and openai_fake.streams_completed == 0
    # what was produced is far less than the 400 words: the estimate covers a few chunks only
    assert generation_row(gw.engine, generation_id)["completion_tokens"] < 100


def test_a_client_leaving_while_a_reasoning_model_thinks_is_charged_for_the_thinking(
    upstream_gateway: UpstreamGateway, openai_fake: FakeUpstream, database: dict[str, str],
) -> None:
    """The vendor produced and bills the thinking (`reasoning_content`, sent on as it comes): a
    client leaving before the answer's first token paid nothing (the stream had not even started)."""
    openai_fake.behaviour = Behaviour(thinking=[f"hmm{i} " for i in range(300)], chunks=["The answer."],
                                      chunk_delay=0.01)
    gw = upstream_gateway(openai=openai_fake, **database)
    account = gw.account()
    before = books(gw.engine, account.account_id)

    with gw.http(account) as http, http.stream("POST", "/chat/completions", json=BODY) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = json.loads(next(lines).removeprefix("data: "))  # the head and role with the first thought
        assert first["choices"][0]["delta"] == {"role": "assistant", "reasoning_content": "hmm0 "}
        deltas = [json.loads(line.removeprefix("data: "))["choices"][0]["delta"]
                  for line, _ in zip((line for line in lines if line), range(20), strict=False)]
        assert deltas == [{"reasoning_content": f"hmm{i} "} for i in range(1, 21)]
        generation_id = first["id"]

    assert_cancelled_and_settled(gw, account, generation_id, before.balance)
    assert wait_for(lambda: openai_fake.streams_closed == 1, timeout=2.0)
    # at least the thinking the client saw (no answer yet; the estimate: 4 bytes a token)
    assert generation_row(gw.engine, generation_id)["completion_tokens"] >= len("".join(
        f"hmm{i} " for i in range(21))) // 4


def test_a_client_leaving_a_slow_simulated_stream_is_charged_for_what_was_produced(
    make_gateway: GatewayFactory,
) -> None:
    """Counted by the simulated provider's own rule, not estimated from bytes: a client leaving
    the demo's stream pays exactly for what was produced (it paid 50 % more; found by a SPEC audit)."""
    gw = make_gateway(simulated_chat_delay=0.2)
    account = gw.account()
    before = books(gw.engine, account.account_id)
    messages = [{"role": "user", "content": "Écris-moi une très longue histoire sur un phare — 灯台の物語"}]
    received: list[str] = []

    generation_id = read_then_hang_up(gw, account, events=3, received=received,
                                      body={**BODY, "messages": messages})

    assert_cancelled_and_settled(gw, account, generation_id, before.balance)
    record = generation_row(gw.engine, generation_id)
    assert record["prompt_tokens"] == simulated_prompt_tokens(messages) != estimate_used_prompt_tokens(messages)
    text = "".join(received)
    assert text and simulated_tokens(text) <= record["completion_tokens"] <= simulated_tokens(text) + 12


def test_a_client_that_gives_up_before_the_first_token_leaves_no_open_hold(
    upstream_gateway: UpstreamGateway, openai_fake: FakeUpstream, database: dict[str, str],
) -> None:
    """The client times out while the upstream is slow to start; the upstream then answers."""
    openai_fake.behaviour = Behaviour(hang=1.0, chunks=[f"word{i} " for i in range(400)], chunk_delay=0.01)
    gw = upstream_gateway(openai=openai_fake, **database)
    account = gw.account()
    before = books(gw.engine, account.account_id)

    with gw.http(account, timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/chat/completions", json=BODY)

    generation_id = wait_for(lambda: _only_generation(gw, account), timeout=4.0)
    record = generation_row(gw.engine, generation_id)
    assert record["status"] == "cancelled"
    assert wait_for(lambda: openai_fake.streams_closed == 1, timeout=2.0)
    assert openai_fake.streams_completed == 0
    hold = hold_for(gw.engine, generation_id)
    assert (hold["status"], hold["charged"]) == ("released", 0)  # nothing was produced (it paid its prompt)
    after = assert_books_balance(gw.engine, account.account_id)
    assert after.balance == before.balance


def test_a_client_that_stops_reading_and_leaves_is_settled_at_once(
    upstream_gateway: UpstreamGateway, openai_fake: FakeUpstream, database: dict[str, str],
) -> None:
    """A fast upstream and a client that stops reading: the gateway's writes back up (the body
    generator waits at a `yield`, not at the upstream) when the client hangs up."""
    openai_fake.behaviour = Behaviour(chunks=["x" * 16000 + " "] * 4000)
    gw = upstream_gateway(openai=openai_fake, **database)
    account = gw.account()
    before = books(gw.engine, account.account_id)

    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    payload = json.dumps(BODY).encode()
    sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + account.api_key.encode() + b"\r\n"
                 b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    head = sock.recv(2048)
    assert head.startswith(b"HTTP/1.1 200")
    time.sleep(0.5)  # stop reading: buffers fill up on both sides
    sock.close()

    generation_id = wait_for(lambda: _only_generation(gw, account), timeout=3.0)
    assert generation_row(gw.engine, generation_id)["status"] == "cancelled"
    assert wait_for(lambda: openai_fake.streams_closed == 1, timeout=2.0)
    assert openai_fake.streams_completed == 0
    hold = hold_for(gw.engine, generation_id)
    assert 0 < hold["charged"] <= hold["amount"]
    after = assert_books_balance(gw.engine, account.account_id)
    assert before.balance - after.balance == hold["charged"]


class SlowClient:
    """An ASGI client that reads `reads` body messages, then stops reading (its `send` blocks, as
    a full socket does) and hangs up."""

    def __init__(self, body: bytes, reads: int) -> None:
        self.body, self.reads = body, reads
        self.sent: list[bytes] = []
        self.requested = False
        self.hung_up = anyio.Event()

    async def receive(self) -> dict[str, Any]:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.sent.append(message["body"])
            if len(self.sent) == self.reads:
                self.hung_up.set()
                await anyio.sleep_forever()


def test_an_event_stream_closes_its_body_when_the_client_leaves_during_a_blocked_send() -> None:
    """The body generator waits at a `yield` (not an await) while `send` is blocked, so cancelling
    the send does not reach it: the response itself must close it, or its `finally` (close the
    upstream, settle the hold) waits for the garbage collector."""
    finished: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        try:
            for i in range(100):
                yield b"data: %d\n\n" % i
        finally:
            finished.append("closed")

    async def call() -> list[str]:
        events = body()  # held here, so only an explicit close can run its `finally`
        client = SlowClient(b"", reads=2)
        client.requested = True
        await EventStreamResponse(events)({"type": "http", "asgi": {"spec_version": "2.4"}}, client.receive,
                                          client.send)
        assert len(client.sent) == 2
        return list(finished)  # before the event loop's shutdown finalizes leftover generators

    assert anyio.run(call) == ["closed"]


def test_a_slow_reader_that_hangs_up_is_settled_as_the_response_ends_not_by_the_garbage_collector(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    engine = get_engine(settings.database_url)
    upgrade(engine)
    account = create_test_account(engine)
    app = create_app(settings)
    before = books(engine, account.account_id)
    request = json.dumps({**BODY, "messages": [{"role": "user", "content": "A long story, please. " * 30}]})
    client = SlowClient(request.encode(), reads=3)
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/api/v1/chat/completions",
             "raw_path": b"/api/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"gw"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {account.api_key}".encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}

    async def call() -> tuple[str, dict[str, Any] | None]:
        async with app.router.lifespan_context(app):
            await app(scope, client.receive, client.send)
            generation_id = json.loads(client.sent[0].decode().removeprefix("data: "))["id"]
            # read before the event loop's shutdown finalizes any leftover generator
            return generation_id, await anyio.to_thread.run_sync(generation_row, engine, generation_id)

    gc.disable()  # a reference cycle must not decide when the hold is resolved
    try:
        generation_id, record = anyio.run(call)
        assert record is not None and record["status"] == "cancelled"
        hold = hold_for(engine, generation_id)
        assert hold["status"] == "settled" and 0 < hold["charged"] < hold["amount"]
        after = assert_books_balance(engine, account.account_id)
        assert before.balance - after.balance == hold["charged"]
    finally:
        gc.enable()
        engine.dispose()


def _only_generation(gw: Gateway, account: TestAccount) -> str | None:
    from sqlalchemy import text

    with gw.engine.connect() as conn:
        rows = conn.execute(text("SELECT id FROM generations WHERE account_id = :a"),
                            {"a": account.account_id}).all()
    assert len(rows) <= 1
    return rows[0][0] if rows else None


def test_a_client_leaving_mid_tool_call_is_charged_for_the_call_so_far(
    make_gateway: GatewayFactory, database: dict[str, str],
) -> None:
    """A streamed tool call is produced text too: its name and the arguments sent so far are
    charged (by the simulated provider's rule), and the tools count in the prompt."""
    gw = make_gateway(simulated_chat_delay=0.2, **database)
    account = gw.account()
    before = books(gw.engine, account.account_id)
    tools = [{"type": "function", "function": {"name": "write_story", "parameters": {
        "type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]}}}]

    messages = [{"role": "user", "content": "write me a very long story about a lighthouse " * 4}]  # no name in it
    seen: list[dict[str, Any]] = []
    with gw.http(account) as http, http.stream("POST", "/chat/completions",
                                               json={**BODY, "messages": messages, "tools": tools}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if len(seen) == 4:  # the call's name, then three pieces of its 200-odd characters of arguments
                    break
    generation_id = seen[0]["id"]
    pieces = [p for c in seen for p in c["choices"][0]["delta"].get("tool_calls") or ()]
    received = "".join(p["function"].get("name", "") + p["function"]["arguments"] for p in pieces)
    assert pieces[0]["function"]["name"] == "write_story" and len(pieces) >= 3

    assert_cancelled_and_settled(gw, account, generation_id, before.balance)
    record = generation_row(gw.engine, generation_id)
    assert record["prompt_tokens"] == simulated_prompt_tokens(messages, tools) > simulated_prompt_tokens(messages)
    # what the client read, and at most the one piece on its way as it left
    assert simulated_tokens(received) <= record["completion_tokens"] <= simulated_tokens(received) + 5
