"""A model whose upstream refuses some sampling fields (the catalog's `unsupported_params`): they
are never sent, not even Helyx's own defaults, and a request that sets one is a 400 naming it,
holding nothing. Every kimi-k2.6 call failed upstream on the default temperature of 0.7, and
grok-4 refuses `stop` and the penalties."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.api.chat.conftest import GatewayFactory
from tests.api.chat.helpers import FAKE_PROVIDER_KEY, Gateway, assert_books_balance, books
from tests.fakes import FakeUpstream

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def gateway(make_gateway: GatewayFactory, openai_fake: FakeUpstream, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Gateway:
    """OpenAI, Moonshot and xAI (all OpenAI-compatible) served by the fake OpenAI upstream."""
    path = tmp_path / "catalog.toml"
    path.write_text("".join(f'[providers.{name}]\nbase_url = "{openai_fake.base_url}"\n'
                            for name in ("openai", "moonshot", "xai")), "utf-8")
    for env in ("OPENAI_API_KEY", "MOONSHOT_API_KEY", "XAI_API_KEY"):
        monkeypatch.setenv(env, FAKE_PROVIDER_KEY)
    on_postgres = {"database_url": request.getfixturevalue("pg_url")} if request.param == "postgres" else {}
    return make_gateway(catalog=path, **on_postgres)


@pytest.mark.parametrize(("model", "never_sent"), [
    ("kimi-k2.6", {"temperature", "top_p", "presence_penalty", "frequency_penalty"}),
    ("grok-pro", {"stop", "presence_penalty", "frequency_penalty"}),
])
def test_the_fields_a_model_refuses_are_never_sent(gateway: Gateway, openai_fake: FakeUpstream, model: str,
                                                   never_sent: set[str]) -> None:
    with gateway.sdk(gateway.account("plus")) as client:
        completion = client.chat.completions.create(model=model, messages=HI, max_tokens=20, user="u-1")
    assert completion.choices[0].message.content
    sent = openai_fake.last_request.json
    assert not never_sent & set(sent), sent
    assert sent["user"] == "u-1" and sent["max_tokens"] == 20


@pytest.mark.parametrize(("model", "field", "value"), [
    ("kimi-k2.6", "temperature", 0.2), ("kimi-k2.6", "temperature", 0), ("kimi-k2.6", "top_p", 0.5),
    ("kimi-k2.6", "presence_penalty", -0.5), ("grok-pro", "stop", ["\n"]), ("grok-pro", "stop", "END"),
    ("grok-pro", "frequency_penalty", 0.5), ("grok-pro", "presence_penalty", 1),
])
def test_setting_one_is_a_400_naming_it_that_holds_nothing(gateway: Gateway, openai_fake: FakeUpstream, model: str,
                                                            field: str, value: object) -> None:
    account = gateway.account("plus")
    with gateway.sdk(account) as client:  # the key is known: its next request may go in at once (PostgreSQL)
        client.chat.completions.create(model="helyx-3.5", messages=HI, max_tokens=5)
    before, rows = books(gateway.engine, account.account_id), ledger_rows(gateway.engine, account.account_id)
    with gateway.http(account) as http:
        for _ in range(2):
            answer = http.post("/chat/completions", json={"model": model, "messages": HI, field: value})
            error = answer.json()["error"]
            assert answer.status_code == 400, answer.text
            assert (error["param"], error["code"]) == (field, "unsupported_parameter")
            assert answer.headers["x-should-retry"] == "false"
    assert openai_fake.request_count == 0
    assert assert_books_balance(gateway.engine, account.account_id) == before
    assert ledger_rows(gateway.engine, account.account_id) == rows  # nothing held, not even for a moment


def ledger_rows(engine: Engine, account_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM ledger_entries WHERE account_id = :a"),
                                {"a": account_id}).scalar_one())


@pytest.mark.parametrize(("model", "fields"), [
    ("kimi-k2.6", {"temperature": 1, "top_p": 0.95, "presence_penalty": 0, "frequency_penalty": 0.0}),
    ("kimi-k2.6", {"temperature": 1, "top_p": 1}),  # OpenAI's defaults, which generic clients send (top_p 1 was a 400)
    ("grok-pro", {"stop": [], "presence_penalty": 0, "frequency_penalty": 0, "temperature": 0.2}),
])
def test_values_that_ask_for_nothing_pass_and_are_not_sent_either(
        gateway: Gateway, openai_fake: FakeUpstream, model: str, fields: dict[str, object]) -> None:
    """What generic clients send with every request (the fixed value, a zero penalty, no stop)."""
    with gateway.http(gateway.account("plus")) as http:
        answer = http.post("/chat/completions", json={"model": model, "messages": HI, "max_tokens": 5, **fields})
    assert answer.status_code == 200, answer.text
    sent = openai_fake.last_request.json
    withheld = {"kimi-k2.6": {"temperature", "top_p", "presence_penalty", "frequency_penalty"},
                "grok-pro": {"stop", "presence_penalty", "frequency_penalty"}}[model]
    assert not withheld & set(sent), sent
    assert model != "grok-pro" or sent["temperature"] == 0.2


def test_other_models_still_get_every_field_and_the_defaults(gateway: Gateway, openai_fake: FakeUpstream) -> None:
    with gateway.sdk(gateway.account("plus")) as client:
        client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=5, stop=["\n"], presence_penalty=0.5)
    sent = openai_fake.last_request.json
    assert (sent["temperature"], sent["top_p"], sent["stop"], sent["presence_penalty"]) == (0.7, 1.0, ["\n"], 0.5)


def test_an_image_for_a_model_that_takes_none_is_a_400_naming_the_part_that_holds_nothing(
        gateway: Gateway, openai_fake: FakeUpstream) -> None:
    """helyx-3.5 (Llama 3.3 on Groq) takes text only: its vendor's refusal came after the hold, a 502."""
    account = gateway.account("plus")
    with gateway.sdk(account) as client:  # the key is known: its next request may go in at once (PostgreSQL)
        client.chat.completions.create(model="helyx-3.5", messages=HI, max_tokens=5)
    before, rows = books(gateway.engine, account.account_id), ledger_rows(gateway.engine, account.account_id)
    picture = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with gateway.http(account) as http:
        for _ in range(2):
            answer = http.post("/chat/completions", json={"model": "helyx-3.5", "messages": [
                {"role": "user", "content": "hi"}, {"role": "user", "content": picture}]})
            error = answer.json()["error"]
            assert answer.status_code == 400, answer.text
            assert (error["param"], error["code"]) == ("messages.1.content.1", "images_not_supported")
        assert http.post("/chat/completions", json={"model": "gpt-4o", "messages": [
            {"role": "user", "content": picture}], "max_tokens": 5}).status_code == 200  # a model with vision
    assert openai_fake.request_count == 1  # gpt-4o (helyx-3.5 is simulated here: no Groq key)
    assert ledger_rows(gateway.engine, account.account_id) == rows + 2  # gpt-4o's hold and settlement only
    assert assert_books_balance(gateway.engine, account.account_id).balance < before.balance


@pytest.mark.parametrize("model", ["claude-4.7", "perplexity-sonar", "mixtral-8x22b"])
def test_a_conversation_ending_with_an_assistant_turn_is_a_400_that_holds_nothing_where_the_vendor_refuses_one(
        gateway: Gateway, openai_fake: FakeUpstream, model: str) -> None:
    """OpenAI answers a conversation whose last turn is the assistant's, and clients send one (a
    trimmed history, a "continue"); Anthropic's Claude 4.6 and later (a prefill), Perplexity and
    Mistral answer 400, which came after the hold as a 502 (found by a wire-format review)."""
    account = gateway.account("plus")
    with gateway.sdk(account) as client:  # the key is known: its next request may go in at once (PostgreSQL)
        client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=5)
    before, rows = books(gateway.engine, account.account_id), ledger_rows(gateway.engine, account.account_id)
    said = {"role": "assistant", "content": "Hello! How can I help?"}
    with gateway.http(account) as http:
        for messages in ([*HI, said], [*HI, said, {"role": "system", "content": "Be brief."}]):
            answer = http.post("/chat/completions", json={"model": model, "messages": messages, "max_tokens": 5})
            error = answer.json()["error"]
            assert answer.status_code == 400, answer.text
            assert (error["param"], error["code"]) == ("messages.1", "final_assistant_turn_not_supported"), error
            assert model in error["message"]
        assert ledger_rows(gateway.engine, account.account_id) == rows  # nothing held, nothing released
        assert books(gateway.engine, account.account_id) == before
        ends_with_user = http.post("/chat/completions", json={"model": model, "max_tokens": 5,
                                                              "messages": [*HI, said, *HI]})
        assert ends_with_user.status_code == 200, ends_with_user.text
        openai = http.post("/chat/completions", json={"model": "gpt-4o", "messages": [*HI, said], "max_tokens": 5})
        assert openai.status_code == 200, openai.text  # a model whose vendor takes one: sent as it came
    assert openai_fake.last_request.json["messages"][-1] == said
    assert_books_balance(gateway.engine, account.account_id)
