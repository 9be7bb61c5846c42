"""A body over HELYX_MAX_BODY_BYTES is a 413 in the OpenAI envelope, whether its size is declared
(Content-Length) or only found while it streams in; nothing is written for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from common.settings import Settings
from tests.api.test_errors import LIMIT, assert_envelope, key_count
from tests.conftest import TestAccount, make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, max_body_bytes=LIMIT)


def test_oversized_body_by_content_length_is_413(app_client: TestClient, account: TestAccount, engine: Engine
                                                  ) -> None:
    before = key_count(engine)
    body = b'{"name": "' + b"x" * LIMIT + b'"}'
    response = app_client.post("/api/v1/keys", content=body, headers={
        **account.headers, "content-type": "application/json"})
    assert_envelope(response, 413, "invalid_request_error", code="payload_too_large")
    assert key_count(engine) == before


@pytest.mark.parametrize(("declared", "status"), [(b"\xb2", 200), ("9" * 5_000, 413), ("0" * 30 + "5", 200)])
def test_a_content_length_is_read_as_ascii_digits_only(declared: bytes | str, status: int) -> None:
    """Straight at the middleware (the HTTP server in front refuses such headers itself): `²`
    passed `isdigit()` and failed `int()`, as did 5,000 digits; leading zeros are still a number."""
    import asyncio

    from api.middleware import BodyLimitMiddleware

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = declared if isinstance(declared, bytes) else declared.encode()
    scope = {"type": "http", "method": "POST", "path": "/api/v1/keys", "raw_path": b"/api/v1/keys",
             "query_string": b"", "headers": [(b"content-length", raw)]}
    asyncio.run(BodyLimitMiddleware(app, 1024)(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == status


def test_oversized_body_streamed_without_content_length_is_413(
    app_client: TestClient, account: TestAccount, engine: Engine
) -> None:
    before = key_count(engine)

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(8):
            yield b"x" * 1024
        yield b'"}'

    response = app_client.post("/api/v1/keys", content=chunks(), headers={
        **account.headers, "content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_envelope(response, 413, "invalid_request_error", code="payload_too_large")
    assert key_count(engine) == before


def test_a_streamed_body_under_the_limit_is_accepted(app_client: TestClient, account: TestAccount) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": '
        yield b'"streamed"}'

    response = app_client.post("/api/v1/keys", content=chunks(), headers={
        **account.headers, "content-type": "application/json"})
    assert response.status_code == 201, response.text
