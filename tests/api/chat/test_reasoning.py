"""A reasoning model's thinking through the gateway: shown as `reasoning_content` (plain and
streamed, as DeepSeek and Moonshot show it), charged from the vendor's usage, and sent back with
its turn only to a vendor that needs it, so the SDK's usual tool loop works on Kimi (whose thinking
models refuse a tool-call turn sent back without it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from api.schemas.base import MAX_CONTENT_CHARS
from tests.api.chat.helpers import (
    FAKE_PROVIDER_KEY,
    Gateway,
    GatewayFactory,
    assert_books_balance,
    books,
    grant,
    hold_for,
)
from tests.api.chat.test_sdk import micro
from tests.api.chat.test_tools import MESSAGES, WEATHER
from tests.fakes import Behaviour, FakeUpstream

THINKING = ["The user wants ", "the weather; ", "I call the tool."]
KIMI_RATE_MICRO = 200_000  # kimi-k2.6: 0.2 credits a token


@pytest.fixture
def kimi(make_gateway: GatewayFactory, openai_fake: FakeUpstream, database: dict[str, str], tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """The built-in `moonshot` provider (replay_reasoning = true) in front of the fake."""
    path = tmp_path / "catalog.toml"
    path.write_text(f'[providers.moonshot]\nbase_url = "{openai_fake.base_url}"\n', "utf-8")
    monkeypatch.setenv("MOONSHOT_API_KEY", FAKE_PROVIDER_KEY)
    return make_gateway(catalog=path, **database)


def _calling(**more: Any) -> Behaviour:
    return Behaviour(**{"answer": "", "thinking": THINKING, "tool_calls": [("get_weather", {"city": "Paris"})],
                        "require_reasoning": True, "prompt_tokens": 50, "completion_tokens": 30, **more})


def test_the_sdks_tool_loop_on_a_thinking_kimi_model_sends_the_thinking_back(
        kimi: Gateway, openai_fake: FakeUpstream) -> None:
    """The loop as OpenAI's docs write it (the answer's message appended as it came): the second
    call carries the first answer's thinking, which Moonshot requires; each call is charged its usage."""
    openai_fake.behaviour = _calling()
    account = kimi.account()
    before = books(kimi.engine, account.account_id)
    with kimi.sdk(account) as client:
        first = client.chat.completions.create(model="kimi-k2.6", messages=MESSAGES, tools=[WEATHER])
        message = first.choices[0].message
        assert message.model_extra["reasoning_content"] == "".join(THINKING)
        (call,) = message.tool_calls
        history = [*MESSAGES, message, {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
        openai_fake.behaviour = Behaviour(answer="Sunny in Paris.", thinking=["It is sunny."],
                                          require_reasoning=True, prompt_tokens=90, completion_tokens=10)
        second = client.chat.completions.create(model="kimi-k2.6", messages=history, tools=[WEATHER])

    assert second.choices[0].message.content == "Sunny in Paris."
    sent = openai_fake.last_request.json["messages"]
    assert sent[1]["reasoning_content"] == "".join(THINKING) and sent[1]["tool_calls"][0]["id"] == call.id
    charged = sum(micro(answer.model_extra["helyx"]["credits_charged"]) for answer in (first, second))
    assert charged == (80 + 100) * KIMI_RATE_MICRO
    assert before.balance - assert_books_balance(kimi.engine, account.account_id).balance == charged


def test_a_streamed_answer_shows_its_thinking_as_reasoning_content_pieces_before_the_answer(
        kimi: Gateway, openai_fake: FakeUpstream) -> None:
    openai_fake.behaviour = Behaviour(thinking=THINKING, chunks=["Sunny ", "in Paris."])
    account = kimi.account()
    with kimi.sdk(account) as client:
        chunks = list(client.chat.completions.create(model="kimi-k2.6", messages=MESSAGES, stream=True,
                                                      stream_options={"include_usage": True}))

    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    thinking = [d.model_extra.get("reasoning_content") for d in deltas]
    assert [t for t in thinking if t] == THINKING
    assert all(d.content is None for d in deltas if d.model_extra.get("reasoning_content"))
    assert "".join(d.content or "" for d in deltas) == "Sunny in Paris."
    last_thought = max(i for i, t in enumerate(thinking) if t)
    assert all(not d.content for d in deltas[:last_thought])  # the thinking comes first
    assert chunks[-1].usage is not None and chunks[-1].model_extra["helyx"]["credits_charged"] > 0


def test_the_sdks_stream_helper_keeps_the_thinking_for_the_next_turn(kimi: Gateway, openai_fake: FakeUpstream) -> None:
    openai_fake.behaviour = _calling()
    account = kimi.account()
    with kimi.sdk(account) as client:
        with client.chat.completions.stream(model="kimi-k2.6", messages=MESSAGES, tools=[WEATHER]) as stream:
            message = stream.get_final_completion().choices[0].message
        (call,) = message.tool_calls
        history = [*MESSAGES, message, {"role": "tool", "tool_call_id": call.id, "content": "Sunny"}]
        openai_fake.behaviour = Behaviour(answer="Sunny.", require_reasoning=True)
        answer = client.chat.completions.create(model="kimi-k2.6", messages=history, tools=[WEATHER])

    assert answer.choices[0].message.content == "Sunny."
    assert openai_fake.last_request.json["messages"][1]["reasoning_content"] == "".join(THINKING)


def test_a_vendor_without_replay_never_gets_the_thinking_sent_back(
        upstream_gateway: Any, openai_fake: FakeUpstream) -> None:
    """OpenAI's own API has no such field: a conversation moved from Kimi to gpt-4o goes without it."""
    gateway = upstream_gateway(openai=openai_fake)
    account = gateway.account()
    turn = {"role": "assistant", "content": "Earlier.", "reasoning_content": "I thought about it."}
    with gateway.sdk(account) as client:
        client.chat.completions.create(model="gpt-4o", messages=[*MESSAGES, turn, {"role": "user", "content": "And?"}])

    assert openai_fake.last_request.json["messages"][1] == {"role": "assistant", "content": "Earlier."}


@pytest.mark.parametrize("bad", [5, ["thought"]])
def test_a_malformed_reasoning_content_is_a_400_that_holds_nothing(gateway: Gateway, bad: Any) -> None:
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    turn = {"role": "assistant", "content": "Earlier.", "reasoning_content": bad}
    with gateway.http(account) as http:
        response = http.post("/chat/completions", json={
            "model": "gpt-4o", "messages": [*MESSAGES, turn, {"role": "user", "content": "And?"}]})

    assert response.status_code == 400, response.text
    assert json.loads(response.text)["error"]["param"].startswith("messages.1")
    assert assert_books_balance(gateway.engine, account.account_id) == before


def test_an_empty_thinking_is_shown_and_sent_back_as_it_came(kimi: Gateway, openai_fake: FakeUpstream) -> None:
    """A thinking model may call a tool without a thought: its `reasoning_content: ""` is the
    vendor's, and DeepSeek (Moonshot too, by the fake) wants it back on the tool-call turn."""
    openai_fake.behaviour = _calling(thinking=[])
    account = kimi.account()
    with kimi.sdk(account) as client:
        first = client.chat.completions.create(model="kimi-k2.6", messages=MESSAGES, tools=[WEATHER])
        message = first.choices[0].message
        assert message.model_extra["reasoning_content"] == ""
        (call,) = message.tool_calls
        openai_fake.behaviour = Behaviour(answer="Sunny.", require_reasoning=True)
        client.chat.completions.create(model="kimi-k2.6", tools=[WEATHER], messages=[
            *MESSAGES, message, {"role": "tool", "tool_call_id": call.id, "content": "Sunny"}])

    assert openai_fake.last_request.json["messages"][1]["reasoning_content"] == ""


def test_a_stream_cut_at_its_limit_while_thinking_can_be_sent_back(kimi: Gateway, openai_fake: FakeUpstream) -> None:
    """The SDK puts such a turn together as thinking with no content: it goes on, as empty text."""
    openai_fake.behaviour = Behaviour(thinking=THINKING, chunks=[], finish="length")
    account = kimi.account()
    with kimi.sdk(account) as client:
        with client.chat.completions.stream(model="kimi-k2.6", messages=MESSAGES, max_tokens=16) as stream:
            with pytest.raises(openai.LengthFinishReasonError):  # the helper's own refusal of a cut answer
                stream.get_final_completion()
            message = stream.current_completion_snapshot.choices[0].message
        assert message.content is None and message.model_extra["reasoning_content"] == "".join(THINKING)
        openai_fake.behaviour = Behaviour(answer="Go on, then.")
        answer = client.chat.completions.create(model="kimi-k2.6", messages=[
            *MESSAGES, message, {"role": "user", "content": "Go on."}])

    assert answer.choices[0].message.content == "Go on, then."
    sent = openai_fake.last_request.json["messages"][1]
    assert sent == {"role": "assistant", "content": "", "reasoning_content": "".join(THINKING)}


def test_the_hold_counts_a_turns_thinking_only_for_a_vendor_that_reads_it(
        kimi: Gateway, openai_fake: FakeUpstream) -> None:
    """Longer than a message's text may be (Helyx's own answers think at length), and counted in
    the hold's prompt bound for Kimi, whose vendor reads it, not for gpt-4o, whose vendor never
    gets it."""
    account = kimi.account()
    grant(kimi.engine, account.account_id, 1_000_000 * 1_000_000)
    thought = "t" * (MAX_CONTENT_CHARS + 1)
    holds = {}
    with kimi.http(account) as http:
        for model in ("kimi-k2.6", "gpt-4o"):
            for reasoning in ("", thought):
                turn = {"role": "assistant", "content": "Earlier.", "reasoning_content": reasoning}
                response = http.post("/chat/completions", json={"model": model, "max_tokens": 10, "messages": [
                    *MESSAGES, turn, {"role": "user", "content": "And?"}]})
                assert response.status_code == 200, response.text
                holds[model, bool(reasoning)] = hold_for(kimi.engine, response.json()["id"])["amount"]

    assert holds["kimi-k2.6", True] - holds["kimi-k2.6", False] == len(thought) * KIMI_RATE_MICRO
    assert holds["gpt-4o", True] == holds["gpt-4o", False]
