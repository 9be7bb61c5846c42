"""The video form (`POST /videos` reads its own body, a form or JSON): every form field is a
string, and a field sent as a file is refused by that name."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from starlette.requests import Request

from api.request_body import json_or_form
from common.errors import InvalidRequest
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


@pytest.mark.parametrize("fields", [
    [("prompt", (None, "start from my photo")), ("input_reference[image_url]", (None, "https://example.com/a.png"))],
    [("prompt", (None, "start from my photo")), ("input_reference[file_id]", (None, "file-abc123"))],
], ids=["image_url", "file_id"])
def test_an_input_reference_sent_as_bracketed_form_fields_is_refused_not_ignored(
        app_client: TestClient, engine: Engine, fields: list[Any]) -> None:
    """The OpenAI SDK sends `input_reference={"image_url": ...}` as the form field
    `input_reference[image_url]`: an unknown name, ignored, and a video made without the
    reference was charged (found by an SDK review). JSON and uploaded files were refused already."""
    account = create_test_account(engine, "plus")
    entries = ledger_count(engine, account.account_id)
    response = app_client.post("/api/v1/videos", headers=account.headers, files=fields)
    error = assert_envelope(response, 400, "invalid_request_error", param="input_reference")
    assert "input_reference" in error["message"], error
    assert ledger_count(engine, account.account_id) == entries


_TWICE, _MIXED = "more than once", "both as a value and as nested fields"


@pytest.mark.parametrize(("fields", "says"), [
    ([("prompt", (None, "a wave")), ("prompt", (None, "a storm"))], _TWICE),
    ([("prompt", (None, "a wave")), ("size", (None, "1280x720")), ("size", (None, "720x1280"))], _TWICE),
    ([("prompt", (None, "a wave")), ("input_reference", (None, "")), ("input_reference[image_url]", (None, "x"))],
     _MIXED),
    ([("prompt", (None, "a wave")), ("prompt[x]", (None, "y"))], _MIXED),
    ([("prompt", (None, "a wave")), ("size[]", (None, "1280x720")), ("size", (None, "720x1280"))], _MIXED),
], ids=["prompt twice", "size twice", "plain then nested", "nested after plain", "list then plain"])
def test_a_form_field_sent_twice_or_both_plain_and_nested_is_refused_saying_so(
        app_client: TestClient, engine: Engine, fields: list[Any], says: str) -> None:
    """All but one of the values were dropped without a word, and the video made and charged."""
    account = create_test_account(engine, "plus")
    entries = ledger_count(engine, account.account_id)
    response = app_client.post("/api/v1/videos", headers=account.headers, files=fields)
    error = assert_envelope(response, 400, "invalid_request_error", param=fields[-1][0].partition("[")[0])
    assert error["code"] == "invalid_form" and says in error["message"], error
    assert ledger_count(engine, account.account_id) == entries


def test_an_unknown_list_field_is_ignored_as_in_json_and_a_file_under_a_nested_name_is_named(
        app_client: TestClient, engine: Engine) -> None:
    """The SDK sends a list in a form as `name[]` repeated: it was refused as a field sent twice,
    where the same unknown field in JSON is ignored; and a binary file under `input_reference[file]`
    was refused as a form that is not UTF-8 rather than by its field (a diff review)."""
    account = create_test_account(engine, "plus")
    listed = app_client.post("/api/v1/videos", headers=account.headers,
                             files=[("prompt", (None, "a wave")), ("tags[]", (None, "a")), ("tags[]", (None, "b"))])
    assert listed.status_code == 200, listed.text
    entries = ledger_count(engine, account.account_id)
    filed = app_client.post("/api/v1/videos", headers=account.headers,
                            files=[("prompt", (None, "a wave")), ("input_reference[file]", ("a.png", b"\x89PNG\xff\xfe",
                                                                                         "image/png"))])
    assert_envelope(filed, 400, "invalid_request_error", param="input_reference")
    assert ledger_count(engine, account.account_id) == entries


@pytest.mark.parametrize("file_field", ["foo", "foo[bar]"])
def test_a_text_part_that_is_not_utf8_is_refused_even_beside_a_file(
        app_client: TestClient, engine: Engine, file_field: str) -> None:
    """A file anywhere in the form turned the UTF-8 check off, and the prompt was decoded as Latin-1,
    served and charged garbled (a diff review)."""
    account = create_test_account(engine, "plus")
    entries = ledger_count(engine, account.account_id)
    binary = (file_field, ("x.bin", b"\x00\xff\xfe binary", "application/octet-stream"))
    response = app_client.post("/api/v1/videos", headers=account.headers,
                               files=[("prompt", (None, b"a \xff\xfe cat")), binary])
    error = assert_envelope(response, 400, "invalid_request_error")
    assert error["code"] == "invalid_form" and "UTF-8" in error["message"], error
    assert ledger_count(engine, account.account_id) == entries
    fine = app_client.post("/api/v1/videos", headers=account.headers,
                           files=[("prompt", (None, "a café cat".encode())), binary])
    assert fine.status_code == 200 and fine.json()["prompt"] == "a café cat", fine.text


def _part(head: bytes, data: bytes) -> bytes:
    return b"--XyZb\r\n" + head + b"\r\n\r\n" + data + b"\r\n"


_FILE_HEAD = b'Content-Disposition: form-data; name="foo"; filename="x.bin"\r\nContent-Type: application/octet-stream'
_FILE = _part(_FILE_HEAD, b"\x00\xff\xfe binary")
_TRICKY_FILE = _part(_FILE_HEAD, b"\x00\xff --XyZb\r\n\r\n\xfe binary")  # boundary-like bytes, not after a CRLF
_GOOD_PROMPT = _part(b'Content-Disposition: form-data; name="prompt"', "a café cat".encode())


@pytest.mark.parametrize(("prompt_part", "file_part", "epilogue", "status"), [
    (_part(b"Content-Disposition: form-data; name=\"prompt\"; filename*=UTF-8''p.txt", b"a \xff\xfe cat"), _FILE, b"",
     400),
    (_part(b'Content-Disposition: form-data; name="prompt"\r\nX-Original-Filename: p', b"a \xff\xfe cat"), _FILE, b"",
     400),
    (_part(b'Content-Disposition: form-data; name="prompt"', b"a --XyZb \xff\xfe cat"), _FILE, b"", 400),
    (_GOOD_PROMPT, _FILE, b"\r\n\r\n\xff\xfe", 200),
    (_GOOD_PROMPT, _TRICKY_FILE, b"", 200),
    (_part(b'Content-Disposition: form-data; name="prompt"; filename="p.txt"\r\n'
           b'Content-Disposition: form-data; name="prompt"', b"a \xff\xfe cat"), _FILE, b"", 400),
], ids=["filename* is no file", "a header naming a filename", "boundary text inside", "bad bytes after the end",
        "boundary text inside a file", "the last of two dispositions counts"])
def test_text_parts_beside_a_file_are_found_as_the_form_parser_finds_them(
        app_client: TestClient, engine: Engine, prompt_part: bytes, file_part: bytes, epilogue: bytes,
        status: int) -> None:
    """The UTF-8 check split the body on the bare boundary and took any part naming a filename
    anywhere in its head for a file: some garbled prompts passed, some valid bodies were refused."""
    account = create_test_account(engine, "plus")
    body = prompt_part + file_part + b"--XyZb--\r\n" + epilogue
    response = _raw(app_client, account, body, MULTIPART)
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["error"]["code"] == "invalid_form" and "UTF-8" in response.text


def test_a_multipart_form_in_another_charset_is_refused(app_client: TestClient, engine: Engine) -> None:
    """The form parser decodes the parts by the body's charset: UTF-8 bytes of "a café cat" under
    `charset=latin-1` were served and charged as "a cafÃ© cat" (a diff review)."""
    account = create_test_account(engine, "plus")
    entries = ledger_count(engine, account.account_id)
    body = _GOOD_PROMPT + b"--XyZb--\r\n"
    error = assert_envelope(_raw(app_client, account, body, MULTIPART + "; charset=latin-1"), 400,
                            "invalid_request_error")
    assert error["code"] == "invalid_form" and "UTF-8" in error["message"], error
    assert ledger_count(engine, account.account_id) == entries
    assert _raw(app_client, account, body, MULTIPART + "; charset=UTF-8").status_code == 200


@pytest.mark.parametrize(("content_type", "body"), [
    ("multipart/form-data", b"x"),  # no boundary
    ("multipart/form-data; boundary=XyZb",  # a part without a name
     b"--XyZb\r\nContent-Disposition: form-data\r\n\r\na cat\r\n--XyZb--\r\n"),
    ("multipart/form-data; boundary=XyZb", b"--XyZb\r\ngarbage without a blank line--XyZb--\r\n"),
])
def test_a_form_the_parser_cannot_read_is_an_invalid_form(app_client: TestClient, engine: Engine,
                                                          content_type: str, body: bytes) -> None:
    """A fuzz review: these were 400s with the code `invalid_request` and the parser's own words."""
    account = create_test_account(engine, "plus")
    entries = ledger_count(engine, account.account_id)
    error = assert_envelope(_raw(app_client, account, body, content_type), 400, "invalid_request_error")
    assert error["code"] == "invalid_form" and error["message"].startswith(("The form cannot be read",
                                                                            "The multipart body ends")), error
    assert ledger_count(engine, account.account_id) == entries


def _raw(app_client: TestClient, account: Any, body: bytes, content_type: str | None) -> Any:
    headers = {**account.headers, **({"Content-Type": content_type} if content_type else {})}
    return app_client.post("/api/v1/videos", headers=headers, content=body)


MULTIPART = "multipart/form-data; boundary=XyZb"
FIELDS = (b'--XyZb\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na cat\r\n'
          b'--XyZb\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n8\r\n'
          b'--XyZb\r\nContent-Disposition: form-data; name="size"\r\n\r\n1280x720\r\n')


def test_a_multipart_body_cut_off_before_its_closing_boundary_is_refused_not_run_with_defaults(
        app_client: TestClient, engine: Engine) -> None:
    """Its unfinished last field was dropped and its default used: a 720x1280 video, paid for."""
    account = create_test_account(engine, "plus")
    entries = ledger_count(engine, account.account_id)
    error = assert_envelope(_raw(app_client, account, FIELDS, MULTIPART), 400, "invalid_request_error")
    assert error["code"] == "invalid_form" and "closing boundary" in error["message"], error
    assert ledger_count(engine, account.account_id) == entries
    whole = _raw(app_client, account, FIELDS + b"--XyZb--\r\n", MULTIPART)
    assert whole.status_code == 200 and whole.json()["size"] == "1280x720", whole.text


@pytest.mark.parametrize(("body", "content_type"), [
    (FIELDS.replace(b"a cat", b"caf\xe9\xff") + b"--XyZb--\r\n", MULTIPART),
    (b"model=vo3&prompt=%ff%fe&seconds=4&size=1280x720", "application/x-www-form-urlencoded"),
    (b"model=vo3&prompt=caf\xe9&seconds=4&size=1280x720", "application/x-www-form-urlencoded"),
])
def test_a_form_that_is_not_utf8_is_refused_not_decoded_otherwise(app_client: TestClient, engine: Engine,
                                                                   body: bytes, content_type: str) -> None:
    account = create_test_account(engine, "plus")
    entries = ledger_count(engine, account.account_id)
    error = assert_envelope(_raw(app_client, account, body, content_type), 400, "invalid_request_error")
    assert (error["code"], error["message"]) == ("invalid_form", "The form is not valid UTF-8."), error
    assert ledger_count(engine, account.account_id) == entries


@pytest.mark.parametrize(("refused", "accepted"), [  # JSON is read as FastAPI reads it on the JSON routes
    ("text/plain", None), ("application/xml", "application/json; charset=utf-8"),
    ("image/png", "application/vnd.api+json"),
])
def test_a_body_of_another_content_type_is_refused_as_on_the_json_routes(app_client: TestClient, engine: Engine,
                                                                       refused: str, accepted: str | None) -> None:
    account = create_test_account(engine, "plus")
    entries = ledger_count(engine, account.account_id)
    body = b'{"prompt": "a", "seconds": "4", "size": "1280x720"}'
    error = assert_envelope(_raw(app_client, account, body, refused), 400, "invalid_request_error")
    assert error["code"] == "unsupported_content_type", error
    assert ledger_count(engine, account.account_id) == entries
    assert _raw(app_client, account, body, accepted).status_code == 200, accepted


@pytest.mark.anyio
@pytest.mark.parametrize("content_type", [b"application/json", b"multipart/form-data; boundary=xyz",
                                          b"application/x-www-form-urlencoded"])
async def test_a_client_that_leaves_mid_body_is_a_400_not_a_500(content_type: bytes) -> None:
    """POST /videos read its body itself, and a client leaving mid-upload was a 500 with an ERROR
    traceback (false 5xx alerts); FastAPI's own routes answer it as a 400 (a self-contained review)."""
    messages = [{"type": "http.request", "body": b'{"prompt": "half', "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    request = Request({"type": "http", "method": "POST", "headers": [(b"content-type", content_type)]}, receive)
    with pytest.raises(InvalidRequest) as caught:
        await json_or_form(request)
    assert caught.value.code == "body_incomplete"
