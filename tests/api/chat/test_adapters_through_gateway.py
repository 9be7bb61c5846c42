"""Each real adapter (OpenAI-compatible, Anthropic, Gemini) through the whole gateway against its
vendor's fake upstream: plain and streamed answers charged exactly from the upstream's usage, an
answer without usage charged by the estimate (and said so), and a failure mid-stream charged
nothing (SPEC §3), its record keeping what was used."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

import openai
import pytest

from common.chat_billing import estimated_usage
from common.money import MICRO
from tests.api.chat.helpers import FAKE_PROVIDER_KEY, Gateway, assert_books_balance, books, generation_row, hold_for
from tests.fakes import Behaviour, FakeUpstream

MESSAGES = [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Say hello."}]
ANSWER = "Hello there, this is the fake upstream answering in several words."
UpstreamGateway = Callable[..., Gateway]
Adapter = tuple[Gateway, FakeUpstream, str, int]  # gateway, its fake upstream, model, rate
KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")

# adapter -> (model routed to it by the built-in catalog, its rate in micro-credits per token)
ADAPTERS = {"openai": ("gpt-4o", 200_000), "anthropic": ("claude-3-5-sonnet", 600_000),
            "gemini": ("gemini-1-5-pro", 200_000)}


@pytest.fixture(params=list(ADAPTERS))
def adapter(request: pytest.FixtureRequest, upstream_gateway: UpstreamGateway) -> Adapter:
    fake: FakeUpstream = request.getfixturevalue(f"{request.param}_fake")
    fake.behaviour = Behaviour(answer=ANSWER, prompt_tokens=17, completion_tokens=6)
    gateway = upstream_gateway(**{request.param: fake})
    model, rate = ADAPTERS[request.param]
    return gateway, fake, model, rate


def micro(credits: float | int) -> int:
    return int(Decimal(str(credits)) * MICRO)


def test_a_plain_answer_is_charged_from_the_upstreams_usage(adapter: Adapter) -> None:
    gateway, fake, model, rate = adapter
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        completion = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=50)

    assert fake.request_count == 1
    sent_key = {k: v for k, v in fake.last_request.headers.items() if k in KEY_HEADERS}
    assert len(sent_key) == 1 and next(iter(sent_key.values())).endswith(FAKE_PROVIDER_KEY)
    assert completion.model == model and completion.choices[0].message.content == ANSWER
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (17, 6)
    assert completion.system_fingerprint != "helyx-simulated"
    charge = 23 * rate
    assert micro(completion.model_extra["helyx"]["credits_charged"]) == charge
    after = assert_books_balance(gateway.engine, account.account_id)
    assert before.balance - after.balance == charge
    assert not generation_row(gateway.engine, completion.id)["usage_estimated"]


def test_a_streamed_answer_is_charged_from_the_upstreams_usage(adapter: Adapter) -> None:
    gateway, fake, model, rate = adapter
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=50, stream=True,
                                                     stream_options={"include_usage": True}))

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    last = chunks[-1]
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (17, 6)
    charge = 23 * rate
    assert micro(last.model_extra["helyx"]["credits_charged"]) == charge
    after = assert_books_balance(gateway.engine, account.account_id)
    assert before.balance - after.balance == charge
    assert fake.streams_completed == 1


def test_without_include_usage_every_chunk_has_a_choice_and_the_last_carries_usage_and_helyx(
        adapter: Adapter) -> None:
    """OpenAI's quick-start loop, `chunk.choices[0].delta.content` on every chunk, runs to the end:
    the finish chunk comes last, with `usage` and `helyx` (SPEC §4) added to it."""
    gateway, _fake, model, rate = adapter
    account = gateway.account()
    with gateway.sdk(account) as client:
        chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=50, stream=True))
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)

    assert text == ANSWER
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    last = chunks[-1]
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (17, 6)
    assert all(c.usage is None and "helyx" not in (c.model_extra or {}) for c in chunks[:-1])
    assert micro(last.model_extra["helyx"]["credits_charged"]) == 23 * rate
    assert last.model_extra["helyx"]["generation_id"] == last.id
    assert_books_balance(gateway.engine, account.account_id)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_an_answer_without_usage_is_charged_by_the_estimate_and_says_so(
    adapter: Adapter, stream: bool,
) -> None:
    gateway, fake, model, rate = adapter
    fake.behaviour.omit_usage = True
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        if stream:
            chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=50, stream=True))
            generation_id, usage, helyx = chunks[0].id, chunks[-1].usage, chunks[-1].model_extra["helyx"]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            completion = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=50)
            generation_id, usage, helyx = completion.id, completion.usage, completion.model_extra["helyx"]
            text = completion.choices[0].message.content
        record = client.get(f"/generations/{generation_id}", cast_to=object)

    assert text == ANSWER
    estimate = estimated_usage(MESSAGES, ANSWER)
    assert (usage.prompt_tokens, usage.completion_tokens) == (estimate.prompt_tokens, estimate.completion_tokens)
    assert record["usage"]["estimated"] is True and record["status"] == "succeeded"
    hold = hold_for(gateway.engine, generation_id)
    charge = min(estimate.total_tokens * rate, hold["amount"])
    assert hold["charged"] == charge == micro(helyx["credits_charged"]) == micro(record["credits_charged"])
    after = assert_books_balance(gateway.engine, account.account_id)
    assert before.balance - after.balance == charge


def test_an_upstream_error_mid_stream_ends_the_stream_with_an_error_and_charges_nothing(
    adapter: Adapter,
) -> None:
    """SPEC §3: a failed call costs nothing, also one that failed after its first chunk (it was
    charged for what was produced until the SPEC audit). The record keeps what was used."""
    gateway, fake, model, _ = adapter
    fake.behaviour.error_after_chunks = 3
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    received: list[str] = []
    with gateway.sdk(account) as client:
        stream = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=500, stream=True,
                                                stream_options={"include_usage": True})
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                received.append(chunk.id)
                if chunk.choices:
                    received.append(chunk.choices[0].delta.content or "")

    generation_id = received[0]
    produced = "".join(Behaviour(answer=ANSWER).pieces()[:3])
    assert "".join(received[1::2]) == produced
    assert caught.value.type == "upstream_error"
    assert "mid-stream" in caught.value.message
    assert fake.request_count == 1  # never retried once output had reached the client
    record = generation_row(gateway.engine, generation_id)
    assert record["status"] == "interrupted" and record["usage_estimated"]
    hold = hold_for(gateway.engine, generation_id)
    estimate = estimated_usage(MESSAGES, produced)
    # Anthropic (message_start) and Gemini (every chunk) state the prompt's count before the end:
    # it is charged as stated; only OpenAI's stream leaves it to the estimate.
    prompt = estimate.prompt_tokens if model == ADAPTERS["openai"][0] else 17
    assert prompt != estimate.prompt_tokens or model == ADAPTERS["openai"][0]
    assert (hold["status"], hold["charged"]) == ("released", 0)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt, estimate.completion_tokens)
    after = assert_books_balance(gateway.engine, account.account_id)  # no hold left open
    assert after.balance == before.balance
    with gateway.http(account) as http:  # the error event says so too
        raw = http.post("/chat/completions", json={"model": model, "messages": MESSAGES, "stream": True})
    last = json.loads([line for line in raw.text.splitlines() if line.startswith("data: ")][-1][6:])
    assert last["error"]["code"] == "upstream_error" and last["helyx"]["credits_charged"] == 0, last


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": [{"type": "text", "text": "  "}]}, {"role": "assistant", "content": ""}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "\n"}],
])
def test_a_conversation_with_nothing_to_send_is_a_400_before_anything_is_held(
    adapter: Adapter, messages: list[dict[str, object]],
) -> None:
    """OpenAI answers an empty conversation; Anthropic and Gemini refuse one outright (it was sent,
    with a hold, and came back as a 502)."""
    gateway, fake, model, _ = adapter
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        if model == ADAPTERS["openai"][0]:
            assert client.chat.completions.create(model=model, messages=messages).choices[0].message.content
            return
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=model, messages=messages)
    assert refused.value.body["param"] == "messages" and "empty" in refused.value.body["message"]
    assert fake.request_count == 0
    assert books(gateway.engine, account.account_id) == before  # no hold, no ledger row


def test_a_conversation_of_system_messages_only_is_answered(adapter: Adapter) -> None:
    """As OpenAI answers it; Anthropic and Gemini need a turn: the system text is sent as the user's."""
    gateway, fake, model, _ = adapter
    account = gateway.account()
    with gateway.sdk(account) as client:
        completion = client.chat.completions.create(
            model=model, messages=[{"role": "system", "content": "Reply with a greeting."}])
    assert completion.choices[0].message.content == ANSWER
    assert "Reply with a greeting." in json.dumps(fake.last_request.json)


def test_an_earlier_turns_refusal_is_sent_as_that_turns_text(adapter: Adapter) -> None:
    gateway, fake, model, _ = adapter
    with gateway.sdk(gateway.account()) as client:
        client.chat.completions.create(model=model, messages=[
            {"role": "user", "content": "Help me."},
            {"role": "assistant", "content": None, "refusal": "I can't help with that."},  # as the SDK returned it
            {"role": "user", "content": "Then say hello."}])
    sent = json.dumps(fake.last_request.json)
    assert "I can't help with that." in sent and "null" not in sent.split("Help me.")[1].split("Then say")[0]


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_refusal_reaches_the_client_as_a_refusal(
    upstream_gateway: UpstreamGateway, openai_fake: FakeUpstream, stream: bool,
) -> None:
    """OpenAI's `refusal` (content null) was turned into an empty answer; SDK code that checks
    `message.refusal` (or the streamed `delta.refusal`) never saw it."""
    openai_fake.behaviour = Behaviour(refusal="I can't help with that request.", prompt_tokens=9, completion_tokens=7)
    gateway = upstream_gateway(openai=openai_fake)
    with gateway.sdk(gateway.account()) as client:
        if not stream:
            completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            message = completion.choices[0].message
            assert (message.content, message.refusal) == (None, "I can't help with that request.")
            assert completion.usage.completion_tokens == 7
            return
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                                     stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.refusal or "" for d in deltas) == "I can't help with that request."
    assert not "".join(d.content or "" for d in deltas)
    assert chunks[-1].usage.completion_tokens == 7
