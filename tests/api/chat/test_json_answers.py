"""JSON answers (`response_format`) through the gateway with the official SDK: JSON mode and a
schema on the simulated model (the SDK's own `parse` included), the format sent on to the
OpenAI-compatible and Gemini upstreams in their terms, refused before any hold for Anthropic's,
which has no JSON mode, and every malformed format a 400 that holds nothing."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from common.tokens import estimate_prompt_tokens
from tests.api.chat.helpers import Gateway, assert_books_balance, books, hold_for
from tests.api.chat.test_adapters_through_gateway import ADAPTERS
from tests.api.chat.test_sdk import RATE_MICRO, assert_nothing_moved, micro
from tests.fakes import Behaviour, FakeUpstream

ASK_JSON = [{"role": "user", "content": "List two colours as JSON."}]
SCHEMA = {"type": "object", "properties": {"colours": {"type": "array", "items": {"type": "string"}},
                                           "warm": {"type": "boolean"}}, "required": ["colours", "warm"],
          "additionalProperties": False}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "palette", "schema": SCHEMA, "strict": True}}


class Venue(BaseModel):
    city: str
    seats: int


class Event(BaseModel):
    name: str
    venue: Venue  # a nested model: the SDK's schema refers to it through $defs
    online: bool | None


def test_json_mode_answers_a_json_object_charged_with_the_format_in_the_hold(gateway: Gateway) -> None:
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client:
        reply = client.chat.completions.create(model="gpt-4o", messages=ASK_JSON,
                                               response_format={"type": "json_object"})
    answer = json.loads(reply.choices[0].message.content)
    assert set(answer) == {"answer"} and "List two colours" in answer["answer"]
    charge = reply.usage.total_tokens * RATE_MICRO["gpt-4o"]
    assert micro(reply.model_extra["helyx"]["credits_charged"]) == charge
    after = assert_books_balance(gateway.engine, account.account_id)
    assert before.balance - after.balance == charge
    bound = estimate_prompt_tokens(ASK_JSON, response_format={"type": "json_object"})
    assert bound > estimate_prompt_tokens(ASK_JSON)
    assert hold_for(gateway.engine, reply.id)["amount"] >= bound * RATE_MICRO["gpt-4o"]


def test_a_schema_is_answered_by_a_value_of_it_plain_and_streamed(gateway: Gateway) -> None:
    account = gateway.account()
    with gateway.sdk(account) as client:
        plain = client.chat.completions.create(model="gpt-4o", messages=ASK_JSON, response_format=SCHEMA_FORMAT)
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=ASK_JSON, response_format=SCHEMA_FORMAT,
                                                     stream=True))
    assert json.loads(plain.choices[0].message.content) == {"colours": [], "warm": True}
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content
    assert_books_balance(gateway.engine, account.account_id)


def test_the_sdks_parse_gets_its_pydantic_model_back(gateway: Gateway) -> None:
    """`client.chat.completions.parse` sends a strict schema with $defs and validates the answer."""
    account = gateway.account()
    with gateway.sdk(account) as client:
        completion = client.chat.completions.parse(model="gpt-4o", response_format=Event, messages=[
            {"role": "user", "content": "Plan a meetup in Oslo"}])
    event = completion.choices[0].message.parsed
    assert isinstance(event, Event) and isinstance(event.venue, Venue)
    assert (event.name, event.venue.city, event.venue.seats) == ("Oslo", "Oslo", 1)
    assert_books_balance(gateway.engine, account.account_id)


@pytest.mark.parametrize("vendor", ["openai", "gemini"])
def test_the_format_goes_to_the_upstream_in_its_own_terms(request: pytest.FixtureRequest, upstream_gateway: Any,
                                                          vendor: str) -> None:
    fake: FakeUpstream = request.getfixturevalue(f"{vendor}_fake")
    fake.behaviour = Behaviour(answer='{"colours": ["red", "blue"], "warm": false}')
    gateway = upstream_gateway(**{vendor: fake})
    account = gateway.account()
    with gateway.sdk(account) as client:
        reply = client.chat.completions.create(model=ADAPTERS[vendor][0], messages=ASK_JSON,
                                               response_format=SCHEMA_FORMAT)
    assert json.loads(reply.choices[0].message.content) == {"colours": ["red", "blue"], "warm": False}
    sent = fake.last_request.json
    if vendor == "openai":
        assert sent["response_format"] == SCHEMA_FORMAT
    else:
        assert sent["generationConfig"]["responseMimeType"] == "application/json"
        assert sent["generationConfig"]["responseJsonSchema"] == SCHEMA
    assert_books_balance(gateway.engine, account.account_id)


def test_anthropics_models_refuse_a_json_format_before_any_hold(upstream_gateway: Any,
                                                                anthropic_fake: FakeUpstream) -> None:
    gateway = upstream_gateway(anthropic=anthropic_fake)
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=ADAPTERS["anthropic"][0], messages=ASK_JSON,
                                       response_format={"type": "json_object"})
    assert refused.value.body["param"] == "response_format"  # type: ignore[index]
    assert anthropic_fake.request_count == 0
    assert_nothing_moved(gateway, account, before)


@pytest.mark.parametrize(("response_format", "messages", "says"), [
    ({"type": "json_object"}, [{"role": "user", "content": "List two colours."}], "must contain the word 'json'"),
    ({"type": "json_schema"}, ASK_JSON, "needs its json_schema"),
    ({"type": "json_object", "json_schema": {"name": "x"}}, ASK_JSON, 'only with "type": "json_schema"'),
    ({"type": "json_schema", "json_schema": {"name": "a palette"}}, ASK_JSON, "should match pattern"),
    ({"type": "xml"}, ASK_JSON, "'text', 'json_object' or 'json_schema'"),
    ({}, ASK_JSON, "Missing"),
])
def test_a_malformed_format_is_a_400_naming_it_and_holds_nothing(
        gateway: Gateway, response_format: dict[str, Any], messages: list[dict[str, Any]], says: str) -> None:
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account) as client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=messages, response_format=response_format)
    error = refused.value.body
    assert isinstance(error, dict) and error["param"].startswith("response_format"), error
    assert says in error["message"], error
    assert_nothing_moved(gateway, account, before)
