"""Validation work is bounded by the schema, not by the body: arrays stop at their first bad item
and have a length limit. A 1 MiB body of half a million bad content parts made half a million
errors (gigabytes, seconds of the event loop, before the key was even checked)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine, text

from api.schemas.chat import MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_PARTS_PER_REQUEST, ChatCompletionRequest
from tests.conftest import TestAccount


def _errors(body: dict[str, Any]) -> int:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate(body)
    return len(caught.value.errors())


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": [1] * 200_000}],  # one message, a huge array of bad parts
    [{"role": "user", "content": [1] * MAX_CONTENT_PARTS}] * MAX_MESSAGES,  # every message at its limit
    [{"role": "user", "content": [{"type": "text", "text": 1}] * MAX_CONTENT_PARTS}] * MAX_MESSAGES,
    [{"role": "assistant", "content": [{"type": "image_url"}] * MAX_CONTENT_PARTS}] * MAX_MESSAGES,
    [{"role": "nobody"}] * MAX_MESSAGES,
])
def test_a_body_full_of_bad_items_makes_a_handful_of_errors(messages: list[Any]) -> None:
    assert _errors({"model": "gpt-4o", "messages": messages}) <= 4


def test_content_arrays_are_bounded() -> None:
    def body(parts: int) -> dict[str, Any]:
        return {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * parts}]}

    ChatCompletionRequest.model_validate(body(MAX_CONTENT_PARTS))
    assert _errors(body(MAX_CONTENT_PARTS + 1)) >= 1


def test_the_parts_of_all_the_messages_together_are_bounded_before_any_is_validated() -> None:
    """256 messages of 512 parts were 131,072 objects judged on the event loop for one 400."""
    text = {"type": "text", "text": "a"}
    per_message = MAX_PARTS_PER_REQUEST // 4
    ChatCompletionRequest.model_validate({"model": "m",
                                          "messages": [{"role": "user", "content": [text] * per_message}] * 4})
    bad = {"model": "m", "messages": [{"role": "user", "content": [{"type": "bogus"}] * per_message}] * 5}
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate(bad)
    [error] = caught.value.errors()
    assert error["loc"] == ("messages",) and f"at most {MAX_PARTS_PER_REQUEST} content parts" in error["msg"]


def test_the_api_answers_a_huge_array_of_bad_parts_with_one_400_and_charges_nothing(
        app_client: TestClient, account: TestAccount, engine: Engine) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [1] * 400_000}]}
    response = app_client.post("/api/v1/chat/completions", json=body, headers=account.headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "messages.0.content.0"), error
    assert response.headers["x-should-retry"] == "false"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM holds")).scalar_one() == 0
        assert conn.execute(text("SELECT COUNT(*) FROM generations")).scalar_one() == 0
