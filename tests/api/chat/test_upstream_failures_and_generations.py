"""The chat path against a failing fake OpenAI upstream (a 502 after every retry, 401 → 502, timeout → 504,
retries only before the first byte, all free) and the generation record of every kind of call."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from common.providers.registry import Providers
from tests.api.chat.helpers import (
    Gateway,
    assert_books_balance,
    books,
    generation_row,
    hold_for,
    wait_for,
)
from tests.api.chat.test_billing_rules import (
    MESSAGES,
    RATE,
    USAGE,
    UpstreamGateway,
    chat,
    micro,
    reserved_generation_ids,
    sse_events,
)
from tests.fakes import Behaviour, FakeUpstream


def test_a_call_that_fails_after_every_retry_costs_nothing_and_is_502(gw: Gateway, openai_fake: FakeUpstream) -> None:
    openai_fake.behaviour = Behaviour(fail_first=100, fail_status=500)
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http:
        response = chat(http)
        generation_id = reserved_generation_ids(http)[0]
        record = http.get(f"/generations/{generation_id}").json()
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"
    assert openai_fake.request_count == 1 + 2  # the first attempt and two retries
    after = assert_books_balance(gw.engine, account.account_id)
    assert after.balance == before.balance and after.entries == before.entries + 2  # reserve, release
    assert hold_for(gw.engine, generation_id)["status"] == "released"
    assert record["status"] == "failed" and record["credits_charged"] == 0
    assert record["error_code"] == "upstream_error"


def test_an_upstream_401_is_a_502_upstream_auth_never_a_401_and_is_not_retried(
    gw: Gateway, openai_fake: FakeUpstream,
) -> None:
    openai_fake.behaviour = Behaviour(fail_first=100, fail_status=401, error_message="bad key sk-fake-provider")
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http:
        response = chat(http)
        streamed = chat(http, stream=True)
    for r in (response, streamed):
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_auth"
        assert r.json()["error"]["type"] == "upstream_error"
        assert "sk-fake" not in r.text
        assert r.headers["x-should-retry"] == "false"
    assert openai_fake.request_count == 2
    after = assert_books_balance(gw.engine, account.account_id)
    assert after.balance == before.balance


def test_an_upstream_refusal_of_the_request_is_a_400_with_the_vendors_code_and_param_never_retried(
    gw: Gateway, openai_fake: FakeUpstream,
) -> None:
    openai_fake.behaviour = Behaviour(fail_first=100, fail_status=400, error_code="context_length_exceeded",
                                      error_param="messages",
                                      error_message="This model's maximum context length is 10 tokens.")
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http:
        plain, streamed = chat(http), chat(http, stream=True)
    for r in (plain, streamed):
        assert r.status_code == 400 and r.headers["x-should-retry"] == "false"
        assert r.headers["x-generation-id"].startswith("chatcmpl-")  # the failed call's record
        assert r.json()["error"] == {
            "message": "The upstream provider (openai-compatible) refused the request (HTTP 400): This model's maximum "
                       "context length is 10 tokens.",
            "type": "invalid_request_error", "code": "context_length_exceeded", "param": "messages"}
    with gw.sdk(account, max_retries=2) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "messages")
    assert openai_fake.request_count == 3  # one each: neither the gateway nor the SDK tried again
    after = assert_books_balance(gw.engine, account.account_id)
    assert after.balance == before.balance and after.entries == before.entries + 6  # three reserves, three releases


def test_a_vendors_own_code_reaches_the_client_but_labels_no_metric_series_of_its_own(
    gw: Gateway, openai_fake: FakeUpstream,
) -> None:
    """Any code a vendor made up became a label value: one more time series per code, on every
    scrape (an operator review). The client still gets the vendor's code; the metric, Helyx's."""
    codes = [f"made_up_{n}" for n in range(3)]
    account = gw.account()
    before = {code: _upstream_errors(code) for code in [*codes, "upstream_invalid_request", "context_length_exceeded"]}
    with gw.http(account) as http:
        for code in [*codes, "context_length_exceeded"]:
            openai_fake.behaviour = Behaviour(fail_first=100, fail_status=400, error_code=code,
                                              error_param="messages.0.content", error_message="Bad message content.")
            response = chat(http)
            assert response.status_code == 400 and response.json()["error"]["code"] == code, response.text
    assert all(_upstream_errors(code) == before[code] for code in codes)
    assert _upstream_errors("upstream_invalid_request") == before["upstream_invalid_request"] + 3
    assert _upstream_errors("context_length_exceeded") == before["context_length_exceeded"] + 1


def _upstream_errors(code: str) -> float:
    return REGISTRY.get_sample_value("helyx_upstream_errors_total", {"provider": "openai", "code": code}) or 0.0


def test_an_upstream_that_does_not_answer_in_time_is_a_504(
    upstream_gateway: UpstreamGateway, openai_fake: FakeUpstream, database: dict[str, str],
) -> None:
    gw = upstream_gateway(openai=openai_fake, upstream_read_timeout=0.3, upstream_retries=1, **database)
    openai_fake.behaviour = Behaviour(hang=3.0)
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http:
        response = chat(http)
    assert response.status_code == 504
    assert response.json()["error"] == {
        "message": response.json()["error"]["message"], "type": "upstream_error", "code": "upstream_timeout",
        "param": None}
    assert openai_fake.request_count == 1  # a timeout is not retried, though retries are allowed
    assert response.headers["x-should-retry"] == "false"  # nor by the SDK (it would wait the timeout again)
    assert assert_books_balance(gw.engine, account.account_id).balance == before.balance


def test_two_upstream_500s_then_an_answer_is_200_charged_once(gw: Gateway, openai_fake: FakeUpstream) -> None:
    openai_fake.behaviour = Behaviour(fail_first=2, fail_status=500)
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http:
        response = chat(http)
    assert response.status_code == 200
    assert openai_fake.request_count == 3
    after = assert_books_balance(gw.engine, account.account_id)
    assert after.entries == before.entries + 2  # one reserve, one settle
    assert before.balance - after.balance == USAGE * RATE


@pytest.mark.parametrize("status", [429, 503])
def test_a_stream_is_retried_while_opening_it(gw: Gateway, openai_fake: FakeUpstream, status: int) -> None:
    openai_fake.behaviour = Behaviour(fail_first=2, fail_status=status)
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.http(account) as http, http.stream("POST", "/chat/completions", json={
        "model": "gpt-4o", "messages": MESSAGES, "stream": True}) as response:
        events = sse_events(response)
    assert response.status_code == 200 and events[-1] == "[DONE]"
    assert openai_fake.request_count == 3
    after = assert_books_balance(gw.engine, account.account_id)
    assert before.balance - after.balance == USAGE * RATE


@pytest.mark.parametrize("failure", ["error_after_chunks", "drop_after_chunks"])
def test_a_stream_that_fails_after_its_first_byte_is_not_retried(
    gw: Gateway, openai_fake: FakeUpstream, failure: str,
) -> None:
    openai_fake.behaviour = Behaviour(**{failure: 3})
    account = gw.account()
    with gw.http(account) as http, http.stream("POST", "/chat/completions", json={
        "model": "gpt-4o", "messages": MESSAGES, "stream": True}) as response:
        events = sse_events(response)
    assert response.status_code == 200
    assert openai_fake.request_count == 1
    assert "[DONE]" not in events
    last = events[-1]
    assert isinstance(last, dict) and last["error"]["type"] == "upstream_error"
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                      if isinstance(e, dict) and e.get("choices"))
    assert content == "".join(Behaviour().pieces()[:3])
    assert_books_balance(gw.engine, account.account_id)


def test_generations_record_plain_streamed_failed_and_cancelled_calls(gw: Gateway, openai_fake: FakeUpstream) -> None:
    account = gw.account()
    with gw.http(account) as http:
        plain = chat(http).json()
        with http.stream("POST", "/chat/completions", json={
                "model": "gpt-4o", "messages": MESSAGES, "stream": True}) as response:
            streamed_id = next(e for e in sse_events(response) if isinstance(e, dict))["id"]
        openai_fake.behaviour = Behaviour(fail_first=100, fail_status=400, error_message="no such thing")
        failed = chat(http)
        assert failed.status_code == 502  # a refusal the client cannot mend (the operator's, perhaps)
        failed_id = reserved_generation_ids(http)[0]
        assert failed.headers["x-generation-id"] == failed_id  # the error says where its record is

        openai_fake.behaviour = Behaviour(chunks=["word "] * 200, chunk_delay=0.02)
        with http.stream("POST", "/chat/completions", json={
                "model": "gpt-4o", "messages": MESSAGES, "stream": True}) as response:
            lines = response.iter_lines()
            first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
            for _ in range(6):
                next(lines)
        cancelled_id = first["id"]  # leaving the block closed the connection mid-stream
        wait_for(lambda: generation_row(gw.engine, cancelled_id))

        records = {g: http.get(f"/generations/{g}").json()
                   for g in (plain["id"], streamed_id, failed_id, cancelled_id)}

    p, s, f, c = (records[g] for g in (plain["id"], streamed_id, failed_id, cancelled_id))
    assert p["object"] == "generation" and p["model"] == "gpt-4o" and p["key_id"] == account.key_id
    assert (p["status"], p["stream"]) == ("succeeded", False)
    assert p["usage"] == {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21, "estimated": False}
    assert micro(p["credits_charged"]) == USAGE * RATE == micro(plain["helyx"]["credits_charged"])
    assert p["latency_ms"] >= 0
    assert (s["status"], s["stream"], s["usage"]["total_tokens"]) == ("succeeded", True, 21)
    assert (f["status"], f["credits_charged"], f["usage"]["total_tokens"]) == ("failed", 0, 0)
    assert f["error_code"] == "upstream_error"
    assert (c["status"], c["stream"], c["error_code"]) == ("cancelled", True, "client_disconnected")
    assert c["usage"]["estimated"] is True
    assert 0 < micro(c["credits_charged"]) < hold_for(gw.engine, cancelled_id)["amount"]
    assert_books_balance(gw.engine, account.account_id)


def test_another_accounts_generation_is_404(gw: Gateway) -> None:
    owner, stranger = gw.account(), gw.account()
    with gw.http(owner) as http:
        generation_id = chat(http).json()["id"]
        assert http.get(f"/generations/{generation_id}").status_code == 200
    with gw.http(stranger) as http:
        foreign = http.get(f"/generations/{generation_id}")
        unknown = http.get("/generations/chatcmpl-000000000000000000000000")
    for response in (foreign, unknown):  # a foreign id looks exactly like an unknown one
        assert response.status_code == 404
        error = response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("not_found_error", "generation_not_found", "id")
    assert owner.account_id not in foreign.text


def test_an_adapter_that_cannot_be_made_is_a_500_without_holding_credits(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A defect where the adapter is chosen (once a chat model on the video provider, which the
    catalog now refuses at start) is a 500, but must not leave the account's credits held until
    the sweeper's TTL."""
    def broken(self: Providers, entry: Any) -> Any:
        raise ValueError(f"provider {entry.provider} cannot serve chat models")

    monkeypatch.setattr(Providers, "chat", broken)
    account = gateway.account()
    before = assert_books_balance(gateway.engine, account.account_id)
    with gateway.http(account) as http:
        response = http.post("/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES})
        first_port = _client_port(response)
        after = http.get("/credits")  # on the same keep-alive connection: the 500 did not reset it
        assert _client_port(after) == first_port
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error" and response.headers["x-request-id"]
    assert assert_books_balance(gateway.engine, account.account_id) == before  # nothing held, nothing written
    assert after.status_code == 200 and "connection" not in response.headers


def _client_port(response: httpx.Response) -> int:
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def test_the_vendors_usage_details_reach_the_sdk_and_the_bill_is_prompt_plus_completion(
        gw: Gateway, openai_fake: FakeUpstream) -> None:
    """Cached prompt tokens and reasoning tokens, as OpenAI states them, are passed on as its usage
    details (an SDK user reads `usage.completion_tokens_details.reasoning_tokens`); the charge is
    still (prompt + completion) x rate. A vendor that states none gets none (simulated, estimates)."""
    openai_fake.behaviour = Behaviour(prompt_tokens=12, completion_tokens=49, thoughts_tokens=40, cached_tokens=8)
    account = gw.account()
    before = books(gw.engine, account.account_id)
    with gw.sdk(account) as client:
        completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        streamed = [c for c in client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}) if c.usage]
    for usage in (completion.usage, streamed[-1].usage):
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 49)
        assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 40
        assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 8
    after = assert_books_balance(gw.engine, account.account_id)
    assert before.balance - after.balance == 2 * (12 + 49) * RATE
