"""The video form (`POST /videos` reads its own body, a form or JSON): every form field is a
string, and a field sent as a file is refused by that name."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.api.test_errors import assert_envelope
from tests.api.test_strict_input import ledger_count
from tests.conftest import create_test_account


def test_a_video_form_still_sends_every_field_as_a_string(app_client: TestClient, engine: Engine) -> None:
    account = create_test_account(engine, "plus")
    form = app_client.post("/api/v1/videos", headers=account.headers,
                           files=[("prompt", (None, "a wave")), ("seconds", (None, "8")), ("size", (None, "720x1280"))])
    assert form.status_code == 200, form.text
    assert (form.json()["seconds"], form.json()["size"]) == ("8", "720x1280")
    as_json = app_client.post("/api/v1/videos", headers=account.headers, json={"prompt": "a wave", "seconds": 4})
    assert as_json.status_code == 200 and as_json.json()["seconds"] == "4", as_json.text


def test_a_video_prompt_uploaded_as_a_file_is_named_as_one(app_client: TestClient, engine: Engine) -> None:
    account = create_test_account(engine, "plus")
    entries = ledger_count(engine, account.account_id)
    response = app_client.post("/api/v1/videos", headers=account.headers,
                               files=[("prompt", ("prompt.txt", b"a wave", "text/plain"))])
    error = assert_envelope(response, 400, "invalid_request_error", param="prompt")
    assert "expected a string, but got an uploaded file" in error["message"], error
    assert ledger_count(engine, account.account_id) == entries
