"""What particular upstream models take, as the built-in catalog describes them (found by a review
of the vendors' documentation against the adapters):

- Claude Opus 4.7 (claude-4.7) refuses `temperature` and `top_p`: Helyx's default temperature is
  not sent; a request that sets one is a 400 before anything is held. It counts up to 4,784
  tokens for one image (2,576 px on the long edge, ⌈w/28⌉ × ⌈h/28⌉): the hold allows 4,800 per
  image, so a charge from the upstream's usage is not cut down to a hold sized for 1,600.
- Anthropic refuses a stop sequence of whitespace only (a 400 of ours, before the hold) and a final
  assistant turn (a prefill) that ends in whitespace (sent right-stripped); Claude 4.6 and later
  refuse any prefill (a 400 of ours for claude-4.7, before the hold).
- MiniMax takes a temperature above 0 and at most 1, Zhipu one from 0 to 1: one outside is sent
  clamped into that range.
"""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from common.catalog import load_catalog
from common.tokens import estimate_prompt_tokens
from tests.api.chat.helpers import Gateway, assert_books_balance, books
from tests.api.chat.test_unsupported_params import ledger_rows
from tests.conftest import make_settings
from tests.fakes import Behaviour, FakeUpstream

HI = [{"role": "user", "content": "hi"}]
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9"
         "awAAAABJRU5ErkJggg==")
WITH_IMAGE = [{"role": "user", "content": [{"type": "text", "text": "What is in this screenshot?"},
                                           {"type": "image_url", "image_url": {"url": PIXEL}}]}]
CLAUDE_RATE = 1_000_000  # micro-credits per token


@pytest.fixture
def claude(upstream_gateway: Callable[..., Gateway], anthropic_fake: FakeUpstream,
           database: dict[str, str]) -> Gateway:
    return upstream_gateway(anthropic=anthropic_fake, **database)


def test_claude_4_7_is_sent_no_temperature(claude: Gateway, anthropic_fake: FakeUpstream) -> None:
    with claude.sdk(claude.account("plus")) as client:
        completion = client.chat.completions.create(model="claude-4.7", messages=HI, max_tokens=20)
    assert completion.choices[0].message.content
    sent = anthropic_fake.last_request.json
    assert sent["model"] == "claude-opus-4-7"
    assert "temperature" not in sent and "top_p" not in sent, sent


@pytest.mark.parametrize(("field", "value"), [("temperature", 0.2), ("temperature", 0), ("top_p", 0.5)])
def test_claude_4_7_refuses_sampling_fields_before_holding(claude: Gateway, anthropic_fake: FakeUpstream,
                                                           field: str, value: float) -> None:
    account = claude.account("plus")
    before, rows = books(claude.engine, account.account_id), ledger_rows(claude.engine, account.account_id)
    with claude.http(account) as http:
        answer = http.post("/chat/completions", json={"model": "claude-4.7", "messages": HI, field: value})
    assert answer.status_code == 400, answer.text
    assert (answer.json()["error"]["param"], answer.json()["error"]["code"]) == (field, "unsupported_parameter")
    assert anthropic_fake.request_count == 0
    assert assert_books_balance(claude.engine, account.account_id) == before
    assert ledger_rows(claude.engine, account.account_id) == rows


def test_claude_4_7_takes_the_sampling_defaults_generic_clients_send(claude: Gateway,
                                                                    anthropic_fake: FakeUpstream) -> None:
    """temperature 1 and top_p 1 ask for nothing (OpenAI's defaults): they pass, and are not sent."""
    with claude.sdk(claude.account("plus")) as client:
        client.chat.completions.create(model="claude-4.7", messages=HI, max_tokens=5, temperature=1, top_p=1)
    sent = anthropic_fake.last_request.json
    assert "temperature" not in sent and "top_p" not in sent, sent


def test_claude_4_7_image_prompt_is_charged_its_full_usage(claude: Gateway, anthropic_fake: FakeUpstream) -> None:
    """One 2576x1456 screenshot is 92 x 52 = 4,784 tokens at Opus 4.7: the upstream's usage is
    charged in full (it was cut to a hold of 1,600 per image, about a third)."""
    anthropic_fake.behaviour = Behaviour(answer="A chart.", prompt_tokens=4_800, completion_tokens=6)
    account = claude.account("plus")
    before = books(claude.engine, account.account_id)
    with claude.sdk(account) as client:
        completion = client.chat.completions.create(model="claude-4.7", messages=WITH_IMAGE, max_tokens=100)
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4_800, 6)
    assert completion.model_extra["helyx"]["credits_charged"] == 4_806
    after = assert_books_balance(claude.engine, account.account_id)
    assert before.balance - after.balance == 4_806 * CLAUDE_RATE


def test_the_image_bound_is_the_models(tmp_path_factory: pytest.TempPathFactory) -> None:
    catalog = load_catalog(make_settings(tmp_path_factory.mktemp("catalog")))
    assert catalog.image_tokens_for("claude-4.7") == 4_800
    assert catalog.image_tokens_for("gpt-4o") == 1_600
    assert catalog.image_tokens_for("no-such-model") == 1_600  # refused later, in the usual order
    text_only = estimate_prompt_tokens(HI, image_tokens=4_800)
    assert text_only == estimate_prompt_tokens(HI)
    assert (estimate_prompt_tokens(WITH_IMAGE, image_tokens=4_800)
            - estimate_prompt_tokens(WITH_IMAGE)) == 4_800 - 1_600


@pytest.mark.parametrize("stop", [["\n\n"], "\n", ["END", " "]])
def test_anthropic_refuses_a_blank_stop_sequence_before_holding(claude: Gateway, anthropic_fake: FakeUpstream,
                                                                stop: object) -> None:
    account = claude.account("plus")
    with claude.sdk(account) as client:  # the key is known: its next request may go in at once (PostgreSQL)
        client.chat.completions.create(model="claude-3-5-sonnet", messages=HI, max_tokens=5)
    before, rows = books(claude.engine, account.account_id), ledger_rows(claude.engine, account.account_id)
    anthropic_fake.reset()
    with claude.http(account) as http:
        answer = http.post("/chat/completions", json={"model": "claude-3-5-sonnet", "messages": HI, "stop": stop})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "stop"
    assert anthropic_fake.request_count == 0
    assert assert_books_balance(claude.engine, account.account_id) == before
    assert ledger_rows(claude.engine, account.account_id) == rows


def test_anthropic_takes_stop_sequences_with_text(claude: Gateway, anthropic_fake: FakeUpstream) -> None:
    with claude.sdk(claude.account()) as client:
        client.chat.completions.create(model="claude-3-5-sonnet", messages=HI, max_tokens=5, stop=["\nEND", "x "])
    assert anthropic_fake.last_request.json["stop_sequences"] == ["\nEND", "x "]


def test_a_prefill_ending_in_whitespace_is_sent_right_stripped(claude: Gateway, anthropic_fake: FakeUpstream) -> None:
    messages = [{"role": "user", "content": "Write a haiku."}, {"role": "assistant", "content": "Here is a haiku:\n"}]
    with claude.sdk(claude.account()) as client:
        completion = client.chat.completions.create(model="claude-3-5-sonnet", messages=messages, max_tokens=20)
    assert completion.choices[0].message.content
    sent = anthropic_fake.last_request.json["messages"]
    assert sent[-1] == {"role": "assistant", "content": [{"type": "text", "text": "Here is a haiku:"}]}
    assert sent[0]["content"] == [{"type": "text", "text": "Write a haiku."}]  # other turns as they came


def test_claude_4_7_is_never_sent_a_conversation_ending_with_an_assistant_turn(
        claude: Gateway, anthropic_fake: FakeUpstream) -> None:
    """Anthropic answers 400 to a prefill on Claude 4.6 and later (its migration guide): a 502
    after the hold. A 400 of ours now, naming the turn; claude-3-5-sonnet still takes one (above)."""
    account = claude.account("plus")
    before = books(claude.engine, account.account_id)
    messages = [*HI, {"role": "assistant", "content": "Hello! How can I help?"}]
    with claude.sdk(account) as client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="claude-4.7", messages=messages, max_tokens=20)
    assert refused.value.body["param"] == "messages.1"  # type: ignore[index]
    assert refused.value.code == "final_assistant_turn_not_supported"
    assert anthropic_fake.request_count == 0 and books(claude.engine, account.account_id) == before


@pytest.fixture
def vendor(make_gateway: Callable[..., Gateway], openai_fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory,
           monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Gateway]:
    """A gateway whose OpenAI-compatible `provider` is the fake, with a key."""
    def make(provider: str) -> Gateway:
        path = tmp_path_factory.mktemp(provider) / "catalog.toml"
        path.write_text(f'[providers.{provider}]\nbase_url = "{openai_fake.base_url}"\n', "utf-8")
        monkeypatch.setenv(f"{provider.upper()}_API_KEY", f"sk-fake-{provider}")
        return make_gateway(catalog=path)
    return make


@pytest.fixture
def minimax(vendor: Callable[[str], Gateway]) -> Gateway:
    return vendor("minimax")


@pytest.mark.parametrize(("model", "upstream", "given", "sent"), [
    ("minimax-m2.7", "MiniMax-M2.7", None, 0.7), ("minimax-m2.7", "MiniMax-M2.7", 0, 0.01),
    ("minimax-m2.7", "MiniMax-M2.7", 0.5, 0.5), ("minimax-m2.7", "MiniMax-M2.7", 1.0, 1.0),
    ("minimax-m2.7", "MiniMax-M2.7", 1.7, 1.0),
    ("glm-5.1-pro", "glm-5.1", 0, 0.0), ("glm-5.1-pro", "glm-5.1", 0.9, 0.9), ("glm-5.1-pro", "glm-5.1", 1.7, 1.0),
])
def test_a_vendor_with_a_narrower_range_is_sent_a_temperature_it_takes(
        vendor: Callable[[str], Gateway], openai_fake: FakeUpstream, model: str, upstream: str,
        given: float | None, sent: float) -> None:
    gateway = vendor("minimax" if model.startswith("minimax") else "zhipu")
    extra = {} if given is None else {"temperature": given}
    with gateway.sdk(gateway.account()) as client:
        completion = client.chat.completions.create(model=model, messages=HI, max_tokens=5, **extra)
    assert completion.choices[0].message.content
    assert openai_fake.last_request.json["temperature"] == sent
    assert openai_fake.last_request.json["model"] == upstream


def test_a_stream_carries_the_upstreams_system_fingerprint_as_a_plain_answer_does(
        upstream_gateway: Callable[..., Gateway], openai_fake: FakeUpstream) -> None:
    """It was None on every chunk (found by an SDK review); the simulated one still says so."""
    gw = upstream_gateway(openai=openai_fake)
    with gw.sdk(gw.account()) as client:
        plain = client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=5)
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=5, stream=True,
                                                     stream_options={"include_usage": True}))
        simulated = list(client.chat.completions.create(model="helyx-3.5", messages=HI, max_tokens=5, stream=True))
    assert plain.system_fingerprint == "fp_fake"
    assert {chunk.system_fingerprint for chunk in chunks} == {"fp_fake"}
    assert {chunk.system_fingerprint for chunk in simulated} == {"helyx-simulated"}


@pytest.mark.parametrize("stream", [False, True])
def test_minimax_out_of_balance_inside_a_200_is_a_502_saying_so_and_charges_nothing(
        minimax: Gateway, openai_fake: FakeUpstream, stream: bool) -> None:
    """MiniMax says "insufficient balance" (its status 1008) in an HTTP 200's base_resp."""
    openai_fake.behaviour = Behaviour(minimax_status=(1008, "insufficient balance"))
    account = minimax.account()
    before = books(minimax.engine, account.account_id)
    with minimax.sdk(account) as client, pytest.raises(openai.APIStatusError) as raised:
        answer = client.chat.completions.create(model="minimax-m2.7", messages=HI, max_tokens=5, stream=stream)
        if stream:
            list(answer)
    assert raised.value.status_code == 502 and raised.value.code == "upstream_quota_exhausted"
    assert openai_fake.request_count == 1  # not retried: no retry brings the balance back
    after = assert_books_balance(minimax.engine, account.account_id)
    assert after.balance == before.balance


def test_a_prompt_minimax_flags_is_a_400_and_charges_nothing(minimax: Gateway, openai_fake: FakeUpstream) -> None:
    openai_fake.behaviour = Behaviour(minimax_status=(1026, "input new_sensitive"))
    account = minimax.account()
    before = books(minimax.engine, account.account_id)
    with minimax.sdk(account) as client, pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="minimax-m2.7", messages=HI, max_tokens=5)
    assert raised.value.code == "content_policy_violation" and raised.value.param == "messages"
    assert assert_books_balance(minimax.engine, account.account_id).balance == before.balance
