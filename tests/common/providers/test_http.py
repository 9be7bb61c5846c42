"""The shared HTTP helpers: the client's settings, Retry-After, vendor messages and SSE parsing."""

from __future__ import annotations

import time
from email.utils import formatdate

import httpx
import pytest

from common.providers.http import (
    SSEEvent,
    build_http_client,
    iter_sse,
    retry_after_seconds,
    status_error,
    vendor_message,
)

pytestmark = pytest.mark.anyio


async def test_the_client_has_explicit_timeouts_and_ignores_proxy_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:1")
    async with build_http_client(connect_timeout=1.5, read_timeout=20.0, max_connections=7) as client:
        assert client.timeout == httpx.Timeout(connect=1.5, read=20.0, write=20.0, pool=20.0)
        assert client.trust_env is False
        session = client._transport.get_client()  # type: ignore[attr-defined]
        try:
            assert session.connector.limit == 7 and session.trust_env is False
        finally:
            await session.close()


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "12"}, 12.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"retry-after": "soon"}, None),
    ({}, None),
])
def test_retry_after_is_read_in_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


def test_retry_after_as_an_http_date() -> None:
    seconds = retry_after_seconds({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert seconds is not None and 25 <= seconds <= 31


@pytest.mark.parametrize("body", [
    b'{"error": {"message": "Bad things", "type": "x"}}',
    b'[{"error": {"code": 400, "message": "Bad things", "status": "INVALID_ARGUMENT"}}]',
    b'{"type": "error", "error": {"type": "invalid_request_error", "message": "Bad things"}}',
    b"Bad   things\n",
])
def test_vendor_messages_are_found_in_every_vendor_shape(body: bytes) -> None:
    assert vendor_message(body, None) == "Bad things"


def test_vendor_messages_are_trimmed_and_never_carry_the_key() -> None:
    message = vendor_message(b'{"error": {"message": "key sk-1 is bad' + b" x" * 400 + b'"}}', "sk-1")
    assert "sk-1" not in message
    assert message.startswith("key *** is bad")
    assert len(message) <= 500


def test_retry_after_is_kept_only_for_retryable_statuses() -> None:
    assert status_error(503, b"", {"retry-after": "3"}, "p", None).retry_after == 3.0
    assert status_error(400, b"", {"retry-after": "3"}, "p", None).retry_after is None


async def test_sse_events_handle_names_comments_multiline_data_and_crlf() -> None:
    raw = (b": keep-alive\r\n\r\nevent: ping\r\ndata: {}\r\n\r\n"
           b"data: line one\ndata: line two\n\ndata:no-space\n\ndata: tail-without-blank-line")
    response = httpx.Response(200, content=raw)
    events = [event async for event in iter_sse(response)]
    assert events == [SSEEvent("ping", "{}"), SSEEvent(None, "line one\nline two"),
                      SSEEvent(None, "no-space"), SSEEvent(None, "tail-without-blank-line")]
