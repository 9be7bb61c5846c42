"""Chat fields the gateway serves or refuses (SPEC §4): null is a field's default; a feature it
cannot honour (the legacy functions, logprobs, audio...) is refused, not ignored (function tools
are served: tests/api/chat/test_tools.py); several choices, or stream
options without a stream, are refused as OpenAI refuses them; an assistant turn needs content;
Helyx's own routes refuse an unknown field. Each refusal is a 400 naming the field, and nothing is
held or written. Split from test_strict_input.py, which keeps the strict reading of types."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.api.test_errors import assert_envelope
from tests.api.test_strict_input import ADMIN, CHAT, HI, chat, ledger_count
from tests.conftest import TestAccount


def test_null_for_an_optional_field_is_its_default(app_client: TestClient, account: TestAccount) -> None:
    """OpenAI takes null for these; some clients send every field, unset ones as null."""
    response = app_client.post(CHAT, headers=account.headers, json=chat(
        temperature=None, top_p=None, stream=None, n=None, max_tokens=None, stop=None, tools=None,
        tool_choice=None, response_format=None, web_search_options=None))
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"  # stream: null is not a stream


@pytest.mark.parametrize(("fields", "param"), [
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"web_search_options": {}}, "web_search_options"),  # {} asks OpenAI's search models to search
    ({"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
    ({"moderation": {"model": "omni-moderation-latest", "policy": {"input": {"mode": "block"}}}}, "moderation"),
    ({"messages": [{"role": "assistant", "content": "x", "function_call": {"name": "f", "arguments": "{}"}},
                   {"role": "user", "content": "go on"}]}, "messages.0.function_call"),
])
def test_a_feature_the_gateway_cannot_honour_is_refused_not_ignored(
        app_client: TestClient, engine: Engine, account: TestAccount, fields: dict[str, Any], param: str) -> None:
    before = ledger_count(engine, account.account_id)
    response = app_client.post(CHAT, headers=account.headers, json=chat(**fields))
    error = assert_envelope(response, 400, "invalid_request_error")
    assert error["param"] == param and "not supported" in error["message"], error
    assert ledger_count(engine, account.account_id) == before


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_an_output_limit_above_4096_is_a_400_naming_it_and_4096_passes(
        app_client: TestClient, engine: Engine, account: TestAccount, field: str) -> None:
    """SPEC: max_tokens 1 to 4096. Only the lower bound was tested (a mutation review)."""
    before = ledger_count(engine, account.account_id)
    error = assert_envelope(app_client.post(CHAT, headers=account.headers, json=chat(**{field: 4097})), 400,
                            "invalid_request_error")
    assert error["param"] == field, error
    assert ledger_count(engine, account.account_id) == before
    assert app_client.post(CHAT, headers=account.headers, json=chat(**{field: 4096})).status_code == 200


@pytest.mark.parametrize(("fields", "param"), [
    ({"seed": "x"}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"store": "yes"}, "store"),
    ({"metadata": {"team": 7}}, "metadata.team"),
    ({"metadata": ["a"]}, "metadata"),
    ({"reasoning_effort": 3}, "reasoning_effort"),
    ({"service_tier": {"tier": "flex"}}, "service_tier"),
    ({"parallel_tool_calls": "true"}, "parallel_tool_calls"),
    ({"prediction": "some text"}, "prediction"),
])
def test_a_wrongly_typed_field_that_is_accepted_and_ignored_is_still_a_400(
        app_client: TestClient, engine: Engine, account: TestAccount, fields: dict[str, Any], param: str) -> None:
    """`seed: "x"` was served and charged as if no seed had been sent; OpenAI answers 400 (a money review)."""
    before = ledger_count(engine, account.account_id)
    error = assert_envelope(app_client.post(CHAT, headers=account.headers, json=chat(**fields)), 400,
                            "invalid_request_error")
    assert error["param"] == param, error
    assert ledger_count(engine, account.account_id) == before
    fine = {"seed": 7, "store": False, "metadata": {"team": "a"}, "reasoning_effort": "low", "service_tier": "auto",
            "parallel_tool_calls": False, "prediction": {"type": "content", "content": "x"}, "verbosity": "low",
            "prompt_cache_key": "k", "safety_identifier": "u-1"}
    assert app_client.post(CHAT, headers=account.headers, json=chat(**fine)).status_code == 200


@pytest.mark.parametrize(("fields", "param", "says"), [
    ({"n": 2}, "n", "only n=1 is supported"),
    ({"n": 0}, "n", "only n=1 is supported"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream is true"),
    ({"stream": False, "stream_options": {"include_usage": False}}, "stream_options", "only allowed when stream"),
])
def test_several_choices_or_stream_options_without_a_stream_are_refused_as_openai_does(
        app_client: TestClient, engine: Engine, account: TestAccount, fields: dict[str, Any], param: str,
        says: str) -> None:
    before = ledger_count(engine, account.account_id)
    error = assert_envelope(app_client.post(CHAT, headers=account.headers, json=chat(**fields)), 400,
                            "invalid_request_error")
    assert error["param"] == param and says in error["message"], error
    assert ledger_count(engine, account.account_id) == before


def test_stream_options_null_or_with_a_stream_pass(app_client: TestClient, account: TestAccount) -> None:
    assert app_client.post(CHAT, headers=account.headers, json=chat(stream_options=None)).status_code == 200
    streamed = app_client.post(CHAT, headers=account.headers,
                               json=chat(stream=True, stream_options={"include_usage": True}))
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]"), streamed.text


def test_the_harmless_forms_of_those_fields_pass(app_client: TestClient, account: TestAccount) -> None:
    response = app_client.post(CHAT, headers=account.headers, json=chat(
        tools=[], tool_choice="none", response_format={"type": "text"}, logprobs=False, top_logprobs=0,
        logit_bias={}, seed=42, modalities=["text"], audio=None,
        messages=[{"role": "assistant", "content": "Hi.", "tool_calls": []}, *HI]))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/api/v1/keys", {"name": "k", "expires_in": 3600}, "expires_in"),
    ("/admin/accounts", {"email": "extra@example.com", "plan": "free", "credits": 5}, "credits"),
    ("credits", {"amount": 5, "ref": "inv-1"}, "ref"),
])
def test_helyxs_own_routes_refuse_an_unknown_field(app_client: TestClient, engine: Engine, account: TestAccount,
                                                  path: str, body: dict[str, Any], param: str) -> None:
    """No SDK sends extras there: `expires_in` for `expires_at` would make a key that never expires."""
    url = f"/admin/accounts/{account.account_id}/credits" if path == "credits" else path
    headers = account.headers if url.startswith("/api/") else ADMIN
    before = ledger_count(engine, account.account_id)
    error = assert_envelope(app_client.post(url, json=body, headers=headers), 400, "invalid_request_error",
                            param=param)
    assert param in error["message"]
    assert ledger_count(engine, account.account_id) == before


@pytest.mark.parametrize("turn", [{"role": "assistant", "content": None}, {"role": "assistant"},
                                  {"role": "assistant", "content": None, "tool_calls": []}])
def test_an_assistant_turn_without_content_is_400_before_anything_is_held(
    app_client: TestClient, account: TestAccount, engine: Engine, turn: dict[str, Any],
) -> None:
    """OpenAI takes an assistant turn without content only with tool calls, which are refused: it
    used to be sent on as null, held for, and refused upstream (a 502)."""
    entries = ledger_count(engine, account.account_id)
    body = chat(messages=[*HI, turn, {"role": "user", "content": "and?"}])
    error = assert_envelope(app_client.post(CHAT, json=body, headers=account.headers), 400, "invalid_request_error",
                            param="messages.1.content" if "content" in turn else "messages.1")  # as written
    assert "assistant message needs content" in error["message"], error
    assert ledger_count(engine, account.account_id) == entries


def test_an_earlier_turns_refusal_stands_for_its_content(app_client: TestClient, account: TestAccount) -> None:
    """The SDK's message of a refused answer, passed back as it came: content null, refusal set."""
    body = chat(messages=[*HI, {"role": "assistant", "content": None, "refusal": "I can't help with that."},
                          {"role": "user", "content": "Fine, then say hello."}])
    response = app_client.post(CHAT, json=body, headers=account.headers)
    assert response.status_code == 200, response.text


def test_an_earlier_turns_refusal_as_a_content_part_is_sent_on_as_its_text(app_client: TestClient,
                                                                          account: TestAccount) -> None:
    """OpenAI takes an assistant turn's content as [{"type": "refusal", ...}]: it was a 400."""
    from api.schemas.chat import ChatCompletionRequest

    turn = {"role": "assistant", "content": [{"type": "text", "text": "Well,"},
                                             {"type": "refusal", "refusal": "I can't help with that."}]}
    body = chat(messages=[*HI, turn, {"role": "user", "content": "Fine, then say hello."}])
    assert app_client.post(CHAT, json=body, headers=account.headers).status_code == 200
    sent = ChatCompletionRequest.model_validate(body).message_dicts()[1]
    assert sent == {"role": "assistant", "content": [{"type": "text", "text": "Well,"},
                                                     {"type": "text", "text": "I can't help with that."}]}
    user_refusal = chat(messages=[{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}])
    assert app_client.post(CHAT, json=user_refusal, headers=account.headers).status_code == 400
