"""Input is taken as the caller wrote it, or refused with a 400 that names the field (SPEC §2):
a JSON `true` or `"2"` is never read as a number, `"yes"` never as a boolean; `param` is the
caller's own field path, never pydantic's union-member tags; a body that is not JSON says so;
list filters and cursors: test_list_filters.py; fields served or refused:
test_chat_fields_served_or_refused.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests.api.test_errors import assert_envelope
from tests.conftest import ADMIN_TOKEN, TestAccount

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = "/api/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
PART_TYPES = ("constrained-str", "tagged-union", "list[", "function-")  # pydantic's names for union members


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "helyx-3.5", "messages": HI, **fields}


def topup(engine: Engine, account_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT topup FROM accounts WHERE id = :a"), {"a": account_id}).scalar_one())


def ledger_count(engine: Engine, account_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM ledger_entries WHERE account_id = :a"),
                                {"a": account_id}).scalar_one())


# ---------------------------------------------------------------- 1. strict JSON types


WRONG_TYPES = [
    ("credits", {"amount": True}, "amount"),
    ("credits", {"amount": "5"}, "amount"),
    ("plan", {"plan": True}, "plan"),
    ("accounts", {"email": "strict@example.com", "plan": 5}, "plan"),
    (CHAT, chat(max_tokens=True), "max_tokens"),
    (CHAT, chat(max_tokens="100"), "max_tokens"),
    (CHAT, chat(max_completion_tokens=1.0), "max_completion_tokens"),
    (CHAT, chat(stream="yes"), "stream"),
    (CHAT, chat(stream=1), "stream"),
    (CHAT, chat(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    (CHAT, chat(temperature="1"), "temperature"),
    (CHAT, chat(temperature=True), "temperature"),
    (CHAT, chat(top_p="0.5"), "top_p"),
    (CHAT, chat(presence_penalty="1"), "presence_penalty"),
    (CHAT, chat(frequency_penalty=False), "frequency_penalty"),
    (CHAT, chat(n=True), "n"),
    (CHAT, chat(user=5), "user"),
    ("/api/v1/images/generations", {"prompt": "a cat", "n": "2"}, "n"),
    ("/api/v1/images/generations", {"prompt": "a cat", "n": True}, "n"),
    ("/api/v1/keys", {"daily_credit_cap": "5"}, "daily_credit_cap"),
    ("/api/v1/keys", {"daily_credit_cap": True}, "daily_credit_cap"),
    ("/api/v1/keys", {"expires_at": True}, "expires_at"),
]


@pytest.mark.parametrize(("path", "body", "param"), WRONG_TYPES,
                         ids=[f"{param}-{i}" for i, (_, _, param) in enumerate(WRONG_TYPES)])
def test_a_wrong_json_type_is_400_naming_the_field_and_changes_nothing(
    app_client: TestClient, account: TestAccount, engine: Engine, path: str, body: dict[str, Any], param: str
) -> None:
    url = {"credits": f"/admin/accounts/{account.account_id}/credits",
           "plan": f"/admin/accounts/{account.account_id}/plan", "accounts": "/admin/accounts"}.get(path, path)
    headers = ADMIN if url.startswith("/admin") else account.headers
    entries = ledger_count(engine, account.account_id)

    error = assert_envelope(app_client.post(url, json=body, headers=headers), 400, "invalid_request_error",
                            param=param, code="invalid_type")

    assert f"'{param}'" in error["message"] and "expected" in error["message"]
    assert topup(engine, account.account_id) == 0
    assert ledger_count(engine, account.account_id) == entries  # nothing reserved, charged or granted


def test_an_integer_still_counts_where_a_number_is_expected(app_client: TestClient, account: TestAccount,
                                                            engine: Engine) -> None:
    response = app_client.post(CHAT, json=chat(temperature=1, top_p=1, presence_penalty=0, frequency_penalty=-1,
                                               max_tokens=16), headers=account.headers)
    assert response.status_code == 200, response.text
    granted = app_client.post(f"/admin/accounts/{account.account_id}/credits", json={"amount": 5}, headers=ADMIN)
    assert granted.status_code == 200, granted.text
    assert topup(engine, account.account_id) == 5 * 10**6
    key = app_client.post("/api/v1/keys", json={"daily_credit_cap": 5}, headers=account.headers)
    assert key.status_code == 201 and key.json()["daily_credit_cap"] == 5


# ---------------------------------------------------------------- 2. param is the caller's field path


PATHS = [
    (chat(messages=[{"role": "user", "content": None}]), "messages.0.content", "a string or an array"),
    (chat(messages=[{"role": "user", "content": 5}]), "messages.0.content", "a string or an array"),
    (chat(messages=[{"role": "system", "content": True}]), "messages.0.content", "a string or an array"),
    (chat(messages=[HI[0], {"role": "assistant", "content": 5}]), "messages.1.content", "a string or an array"),
    (chat(stop=5), "stop", "at most 4"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    (chat(stop=["ok", ""]), "stop", "non-empty"),
    (chat(messages=[{"role": "user", "content": [{"type": "bogus"}]}]), "messages.0.content.0.type", "'bogus'"),
    (chat(messages=[{"role": "user", "content": []}]), "messages.0.content", "at least 1 item"),
    (chat(messages=[{"role": "system", "content": []}, HI[0]]), "messages.0.content", "at least 1 item"),
    (chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), "messages.0.content.0.text",
     "expected a string"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages.0.content.0.image_url.url", "Missing"),
    (chat(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "messages.0.content.0.type", "Missing"),
    (chat(messages=[{"role": "function", "content": "x"}]), "messages.0.role", "'function'"),
    (chat(messages=[{"role": "tool", "content": "x"}]), "messages.0.tool_call_id", "Missing"),
    (chat(messages=[{"content": "x"}]), "messages.0.role", "Missing"),
    (chat(messages=[{"role": "user"}]), "messages.0.content", "Missing"),
    (chat(messages=["hi"]), "messages.0", "expected an object"),
    # a key named like the message's own role is not where pydantic's tag points
    (chat(messages=[{"role": "user", "user": "x"}]), "messages.0.content", "Missing"),
    (chat(messages=[{"role": "system", "system": [1], "content": [{"type": "text", "text": 1}]}]),
     "messages.0.content.0.text", "expected a string"),
]


@pytest.mark.parametrize(("body", "param", "says"), PATHS, ids=[p for _, p, _ in PATHS])
def test_param_is_the_callers_field_path_and_the_message_the_real_problem(
    app_client: TestClient, account: TestAccount, body: dict[str, Any], param: str, says: str
) -> None:
    error = assert_envelope(app_client.post(CHAT, json=body, headers=account.headers), 400, "invalid_request_error",
                            param=param)
    assert says in error["message"], error
    assert not any(tag in error["message"] for tag in PART_TYPES), error
    assert "Input should be a valid string" not in error["message"], error


def test_an_unknown_content_part_type_is_named_with_the_types_there_are(app_client: TestClient,
                                                                        account: TestAccount) -> None:
    body = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "bogus"}]}])
    error = assert_envelope(app_client.post(CHAT, json=body, headers=account.headers), 400, "invalid_request_error",
                            param="messages.0.content.1.type")
    assert "unknown type 'bogus'" in error["message"] and "'text'" in error["message"]
    assert "'image_url'" in error["message"]


BAD_DATA_URLS = ["data:image/png,not-base64", "data:image/png;base64,", "data:image/png;base64,not base64!",
                 "data:image/png;base64,AAAA=AAA", "data:;base64"]


@pytest.mark.parametrize("url", BAD_DATA_URLS)
def test_an_image_data_url_no_vendor_takes_is_400_before_anything_is_held(
    app_client: TestClient, account: TestAccount, engine: Engine, url: str
) -> None:
    """Vendors take base64 image bytes only; such a URL used to be found out inside the provider
    call, after the hold: a reserve and a release in the ledger and a failed generation record."""
    assert "base64" in _image_url_refused_before_the_hold(app_client, account, engine, url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM generations WHERE account_id = :a"),
                            {"a": account.account_id}).scalar_one() == 0


@pytest.mark.parametrize("url", ["notaurl", "ftp://example.com/a.png", "https://", "file:///etc/passwd",
                                 "//example.com/a.png"])
def test_an_image_url_that_is_no_web_or_data_url_is_400_before_anything_is_held(
    app_client: TestClient, account: TestAccount, engine: Engine, url: str
) -> None:
    """The simulated provider took any string and the call was charged; a real vendor refuses it,
    after the hold (a reserve and a release in the ledger; a contract probe)."""
    assert "http(s) URL" in _image_url_refused_before_the_hold(app_client, account, engine, url)


def _image_url_refused_before_the_hold(app_client: TestClient, account: TestAccount, engine: Engine,
                                       url: str) -> str:
    """A chat whose image part has `url`: a 400 naming that part, and no ledger entry. Its message."""
    entries = ledger_count(engine, account.account_id)
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    error = assert_envelope(app_client.post(CHAT, json=chat(messages=[{"role": "user", "content": content}]),
                                            headers=account.headers), 400, "invalid_request_error",
                            param="messages.0.content.1.image_url.url")
    assert ledger_count(engine, account.account_id) == entries
    return str(error["message"])


def test_a_base64_image_data_url_and_a_web_url_pass(app_client: TestClient, account: TestAccount) -> None:
    for url in ("data:image/png;base64,iVBORw0KGgo=", "data:image/jpeg;base64,/9j/4AAQ-_", "https://example.com/a.png",
                "http://203.0.113.7:8080/a.png?sig=x", "HTTPS://example.com/A.PNG", "https://exämple.com/a.png"):
        content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
        response = app_client.post(CHAT, json=chat(model="gpt-4o", messages=[{"role": "user", "content": content}]),
                                   headers=account.headers)
        assert response.status_code == 200, (url, response.text)


# ---------------------------------------------------------------- 3. a body that is not JSON


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_sent_as_another_content_type_is_a_clear_400(app_client: TestClient, account: TestAccount,
                                                            content_type: str | None) -> None:
    headers = {**account.headers, **({"content-type": content_type} if content_type else {})}
    response = app_client.post(CHAT, content=json.dumps(chat()).encode(), headers=headers)
    error = assert_envelope(response, 400, "invalid_request_error", param=None, code="unsupported_content_type")
    assert "application/json" in error["message"]
    assert "dictionary" not in error["message"]


def test_a_form_post_to_a_json_route_is_a_clear_400(app_client: TestClient, account: TestAccount) -> None:
    response = app_client.post(CHAT, data={"model": "helyx-3.5"}, headers=account.headers)
    error = assert_envelope(response, 400, "invalid_request_error", param=None, code="unsupported_content_type")
    assert "Content-Type: application/json" in error["message"]


def test_json_that_is_not_an_object_says_so(app_client: TestClient, account: TestAccount) -> None:
    response = app_client.post(CHAT, json=[chat()], headers=account.headers)
    error = assert_envelope(response, 400, "invalid_request_error", param=None)
    assert "JSON object" in error["message"]


@pytest.mark.parametrize("raw", [b'{"model": "helyx-3.5", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
                                 b'{"model": "helyx-3.5", "max_tokens": ' + b"9" * 5000 + b"}",
                                 b"[" * 100_000 + b"]" * 100_000],
                         ids=["invalid UTF-8", "5,000 digits", "nested 100,000 deep"])
@pytest.mark.parametrize("path", [CHAT, "/api/v1/videos"])  # /videos reads its body itself (JSON or a form)
def test_a_body_json_cannot_read_says_it_is_not_valid_json(app_client: TestClient, account: TestAccount,
                                                            raw: bytes, path: str) -> None:
    response = app_client.post(path, content=raw, headers={**account.headers, "content-type": "application/json"})
    error = assert_envelope(response, 400, "invalid_request_error", param=None, code="invalid_json")
    assert "not valid JSON" in error["message"], error


@pytest.mark.parametrize(("path", "raw", "param"), [
    (CHAT, '{"model": "helyx-3.5", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
     "temperature"),
    (CHAT, '{"model": "helyx-3.5", "messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', "top_p"),
    ("/api/v1/keys", '{"daily_credit_cap": NaN}', "daily_credit_cap"),
    ("/api/v1/keys", '{"expires_at": -Infinity}', "expires_at"),
])
def test_nan_and_infinity_which_json_has_not_are_refused(app_client: TestClient, account: TestAccount,
                                                         engine: Engine, path: str, raw: str, param: str) -> None:
    entries = ledger_count(engine, account.account_id)
    response = app_client.post(path, content=raw, headers={**account.headers, "content-type": "application/json"})
    error = assert_envelope(response, 400, "invalid_request_error", param=param)
    assert "finite number" in error["message"], error
    assert ledger_count(engine, account.account_id) == entries


@pytest.mark.parametrize(("amount", "says"), [(1.0000005, "6 decimals"), (0.0000001, "6 decimals"),
                                              (0, "greater than 0"), (10**9 + 1, "less than or equal")])
def test_an_amount_of_credits_is_exact_to_the_micro_credit_or_refused(
    app_client: TestClient, account: TestAccount, engine: Engine, amount: float, says: str,
) -> None:
    """As the command line has it: 1.0000005 used to be granted as 1.000001 (more than asked) and
    0.0000001 refused as "not positive"."""
    grant = app_client.post(f"/admin/accounts/{account.account_id}/credits", json={"amount": amount}, headers=ADMIN)
    error = assert_envelope(grant, 400, "invalid_request_error", param="amount")
    assert says in error["message"], error
    capped = app_client.post("/api/v1/keys", json={"daily_credit_cap": amount}, headers=account.headers)
    error = assert_envelope(capped, 400, "invalid_request_error", param="daily_credit_cap")
    assert says in error["message"], error
    assert topup(engine, account.account_id) == 0


def test_six_decimals_are_granted_and_capped_exactly(app_client: TestClient, account: TestAccount,
                                                     engine: Engine) -> None:
    grant = app_client.post(f"/admin/accounts/{account.account_id}/credits", json={"amount": 1.000001},
                            headers=ADMIN)
    assert grant.status_code == 200, grant.text
    assert topup(engine, account.account_id) == 1_000_001
    key = app_client.post("/api/v1/keys", json={"daily_credit_cap": 0.000001}, headers=account.headers)
    assert key.status_code == 201 and key.json()["daily_credit_cap"] == 0.000001, key.text


# ---------------------------------------------------------------- 5. wording


def test_a_chat_request_for_an_image_model_says_an_image_model(app_client: TestClient, account: TestAccount
                                                               ) -> None:
    response = app_client.post(CHAT, json=chat(model="nano-banana-pro"), headers=account.headers)
    error = assert_envelope(response, 404, "not_found_error", param="model")
    assert "is an image model" in error["message"]
