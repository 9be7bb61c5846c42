"""The shared HTTP helpers: the client's settings, Retry-After, vendor messages and SSE parsing."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from email.utils import formatdate

import httpx
import pytest

from common.errors import UpstreamError, UpstreamRejectedRequest, UpstreamTimeout
from common.providers.http import (
    NoCookies,
    SSEEvent,
    UpstreamClient,
    build_http_client,
    iter_sse,
    status_error,
    transport_error,
)
from common.providers.vendor_bodies import parse_json, retry_after_seconds, vendor_message

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
    assert getattr(status_error(400, b"", {"retry-after": "3"}, "p", None), "retry_after", None) is None


def test_a_refusal_the_client_can_mend_is_a_400_with_the_vendors_code_and_param() -> None:
    body = json.dumps({"error": {"message": "This model's maximum context length is 10 tokens.",
                                 "type": "invalid_request_error", "param": "messages",
                                 "code": "context_length_exceeded"}}).encode()
    refused = status_error(400, body, {}, "openai", None)
    assert isinstance(refused, UpstreamRejectedRequest) and not refused.retryable
    assert (refused.status, refused.type, refused.code, refused.param) == (
        400, "invalid_request_error", "context_length_exceeded", "messages")
    assert "maximum context length is 10 tokens" in refused.message
    no_param = json.dumps({"error": {"message": "This model's maximum context length is 10 tokens.",
                                     "code": "context_length_exceeded"}}).encode()
    assert status_error(400, no_param, {}, "openai", None).param == "messages"  # it was null (a docs review)
    assert status_error(413, b"too big", {}, "p", None).code == "request_too_large"
    anthropic = json.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                       "message": "prompt is too long: 210000 tokens > 200000"}})
    gemini = json.dumps({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                                   "The input token count (1200000) exceeds the maximum number of tokens allowed."}})
    for vendor_body in (anthropic, gemini):
        words = status_error(400, vendor_body.encode(), {}, "p", None)
        assert (words.status, words.code, words.param) == (400, "context_length_exceeded", "messages")
    odd = json.dumps({"error": {"message": "too long, maximum context length", "code": "Not A Code!",
                                "param": "x" * 101}}).encode()
    assert (status_error(400, odd, {}, "p", None).code, status_error(400, odd, {}, "p", None).param) == (
        "context_length_exceeded", "messages")


@pytest.mark.parametrize("body", [
    {"error": {"message": "Unsupported parameter: 'max_tokens'", "type": "invalid_request_error",
               "param": "max_tokens", "code": "unsupported_parameter"}},  # the adapter's field, not the client's
    {"type": "error", "error": {"type": "invalid_request_error",
                                "message": "Your credit balance is too low to access the Anthropic API."}},
    {"error": {"code": 400, "status": "FAILED_PRECONDITION", "message": "User location is not supported."}},
    {"error": {"message": "Model Not Exist", "type": "invalid_request_error"}},
])
def test_a_refusal_that_may_be_the_operators_stays_a_502_and_is_logged(
        body: dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="helyx.upstream"):
        refused = status_error(400, json.dumps(body).encode(), {}, "vendor", None)
    assert (refused.status, refused.code, refused.retryable) == (502, "upstream_error", False)
    assert [r.name for r in caplog.records] == ["helyx.upstream"]
    for status in (404, 405):  # a model or route the vendor does not have: the operator's
        assert status_error(status, b"", {}, "p", None).status == 502


@pytest.mark.parametrize(("status", "body", "telling"), [
    (400, {"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit balance is too "
                                      "low to access the Anthropic API. Please go to Plans & Billing."}}, "Billing"),
    (400, {"error": {"message": "You exceeded your current quota for org-OPERATOR in project proj_OPERATOR."}},
     "org-OPERATOR"),
    (402, {"error": {"message": "Payment required for workspace acme-internal."}}, "acme-internal"),
    (404, {"error": {"message": "models/gemini-x is not found for API version v1beta at /srv/acme"}}, "/srv/acme"),
])
def test_a_refusal_about_the_operators_account_is_not_quoted_to_the_client(
        status: int, body: dict[str, object], telling: str, caplog: pytest.LogCaptureFixture) -> None:
    """Its text may name the operator's organisation, project or paths: the operator's log has it."""
    with caplog.at_level("WARNING", logger="helyx.upstream"):
        refused = status_error(status, json.dumps(body).encode(), {}, "vendor", None)
    assert (refused.status, refused.retryable) == (502, False)
    assert refused.message == (f"The upstream provider (vendor) answered HTTP {status}; the reason is in the "
                               "gateway operator's log")
    assert [telling in record.getMessage() for record in caplog.records] == [True]


@pytest.mark.parametrize("error", [
    {"message": "You exceeded your current quota, please check your plan and billing details.",
     "type": "insufficient_quota", "param": None, "code": "insufficient_quota"},
    {"message": "Your credit balance is exhausted for org-acme.", "type": "invalid_request_error",
     "code": "credit_balance_exhausted"},
])
def test_a_429_saying_the_operators_account_is_out_of_quota_is_not_retried(
        error: dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    """A wire review: every such 429 was retried with backoff and told the client "rate limited",
    while no retry brings a quota back. The text names the operator's account: the log has it."""
    with caplog.at_level("WARNING", logger="helyx.upstream"):
        refused = status_error(429, json.dumps({"error": error}).encode(), {"retry-after": "1"}, "vendor", None)
    assert (refused.status, refused.retryable, refused.code) == (502, False, "upstream_quota_exhausted")
    assert "out of quota or credit" in refused.message and str(error["message"]) not in refused.message
    assert [str(error["message"]) in record.getMessage() for record in caplog.records] == [True]
    rate = status_error(429, json.dumps({"error": {"message": "Rate limit reached for requests",
                                                   "type": "requests", "code": "rate_limit_exceeded"}}).encode(),
                        {}, "vendor", None)
    assert (rate.retryable, rate.code) == (True, "upstream_rate_limited")
    for odd in ({"x": 1}, ["insufficient_quota"], 5):  # a vendor's odd body: a rate limit, not a 500 (a review)
        body = json.dumps({"error": {"type": odd, "code": odd}}).encode()
        assert status_error(429, body, {}, "vendor", None).code == "upstream_rate_limited"


def test_a_refusal_about_the_request_is_quoted() -> None:
    body = {"error": {"message": "temperature: range: 0..1", "type": "invalid_request_error"}}
    assert status_error(400, json.dumps(body).encode(), {}, "vendor", None).message == (
        "The upstream provider (vendor) answered HTTP 400: temperature: range: 0..1")


def _google_429(delay: object) -> bytes:
    details = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
               {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]
    return json.dumps({"error": {"code": 429, "message": "Quota exceeded. Please retry in 40.1s.",
                                 "status": "RESOURCE_EXHAUSTED", "details": details}}).encode()


@pytest.mark.parametrize(("delay", "seconds"), [("40s", 40.0), ("0.5s", 0.5), ("3.000001s", 3.000001),
                                                 ("soon", None), (40, None), ("-1s", None), ("nans", None)])
def test_googles_retry_info_in_the_body_is_read_when_no_header_says_when(delay: object,
                                                                         seconds: float | None) -> None:
    """Gemini states a 429's wait in the body (google.rpc.RetryInfo), not in Retry-After: without it
    the gateway retried the exhausted quota after 0.2 s, twice."""
    assert status_error(429, _google_429(delay), {}, "gemini", None).retry_after == seconds
    assert status_error(429, _google_429(delay), {"retry-after": "7"}, "gemini", None).retry_after == 7.0


async def test_sse_events_handle_names_comments_multiline_data_and_crlf() -> None:
    raw = (b": keep-alive\r\n\r\nevent: ping\r\ndata: {}\r\n\r\n"
           b"data: line one\ndata: line two\n\ndata:no-space\n\ndata: tail-without-blank-line")
    response = httpx.Response(200, content=raw)
    events = [event async for event in iter_sse(response)]
    assert events == [SSEEvent("ping", "{}"), SSEEvent(None, "line one\nline two"),
                      SSEEvent(None, "no-space"), SSEEvent(None, "tail-without-blank-line")]


def _recording_client(seen: list[httpx.Request], response: httpx.Response) -> UpstreamClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response
    return UpstreamClient(transport=httpx.MockTransport(handler), timeout=httpx.Timeout(3.0, read=7.0),
                          headers={"user-agent": "helyx-gateway"}, follow_redirects=False)


async def test_the_short_json_path_sends_what_the_client_would_and_keeps_no_cookies() -> None:
    seen: list[httpx.Request] = []
    answer = httpx.Response(200, json={"ok": True}, headers={"set-cookie": "tenant=alice; Path=/"})
    async with _recording_client(seen, answer) as client:
        first = await client.post_json(httpx.URL("http://up.test/v1/chat"), {"model": "m", "text": "é"},
                                       {"authorization": "Bearer k"})
        await client.post_json("http://up.test/v1/chat", {"n": 2}, {})
        timeout = client.timeout.as_dict()
    assert first.status_code == 200 and first.json() == {"ok": True} and first.is_closed
    sent = seen[0]
    assert sent.method == "POST" and str(sent.url) == "http://up.test/v1/chat"
    assert sent.headers["user-agent"] == "helyx-gateway"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["authorization"] == "Bearer k"
    assert json.loads(sent.content) == {"model": "m", "text": "é"}
    assert sent.extensions["timeout"] == timeout
    assert "cookie" not in seen[1].headers  # one client serves every tenant: upstream cookies are not kept


async def test_the_short_stream_path_passes_params_and_closes_the_response() -> None:
    seen: list[httpx.Request] = []
    answer = httpx.Response(200, content=b"data: 1\n\ndata: 2\n\n", headers={"content-type": "text/event-stream"})
    async with _recording_client(seen, answer) as client:
        async with client.stream_json("http://up.test/v1/models/x:stream", {"a": 1}, {},
                                      params={"alt": "sse"}) as response:
            events = [event.data async for event in iter_sse(response)]
        assert response.is_closed
    assert events == ["1", "2"]
    assert seen[0].url.params["alt"] == "sse"


class _RecordedStream(httpx.AsyncByteStream):
    """A body that sends one chunk, then fails or ends, and records that it was closed."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        if self.fail:
            raise httpx.ReadError("the upstream hung up")
        yield b"data: 2\n\n"

    async def aclose(self) -> None:
        self.closed = True


async def test_the_short_paths_close_the_response_when_reading_fails_or_the_caller_leaves() -> None:
    failing, left = _RecordedStream(fail=True), _RecordedStream(fail=False)
    async with _recording_client([], httpx.Response(200, stream=failing)) as client:
        with pytest.raises(httpx.ReadError):
            await client.post_json("http://up.test/v1/chat", {}, {})
    async with _recording_client([], httpx.Response(200, stream=left)) as client:
        with pytest.raises(LookupError):
            async with client.stream_json("http://up.test/v1/chat", {}, {}) as response:
                async for _ in iter_sse(response):
                    raise LookupError("the caller stops after the first event")
    assert failing.closed and left.closed


async def test_a_closed_client_refuses_the_short_paths() -> None:
    client = _recording_client([], httpx.Response(200, json={}))
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.post_json("http://up.test/v1/chat", {}, {})


async def test_the_shared_client_keeps_no_cookies_on_its_own_path_either() -> None:
    async with build_http_client(connect_timeout=1.0, read_timeout=1.0) as built:
        assert isinstance(built.cookies.jar, NoCookies)
    seen: list[httpx.Request] = []
    answer = httpx.Response(200, json={}, headers={"set-cookie": "tenant=alice; Path=/"})
    transport = httpx.MockTransport(lambda request: seen.append(request) or answer)
    async with UpstreamClient(transport=transport, cookies=NoCookies()) as client:
        await client.get("http://up.test/v1beta/operations/1")
        await client.get("http://up.test/v1beta/operations/1")
    assert "cookie" not in seen[1].headers


def test_a_pool_timeout_sent_nothing_and_may_be_retried_but_a_read_timeout_may_not() -> None:
    pool = transport_error(httpx.PoolTimeout("all connections busy"), "openai")
    assert pool.retryable and not isinstance(pool, UpstreamTimeout) and pool.code == "upstream_unreachable"
    read = transport_error(httpx.ReadTimeout("no answer"), "openai")
    assert isinstance(read, UpstreamTimeout) and read.status == 504


def test_only_a_vendor_message_about_the_request_reaches_the_client(caplog: pytest.LogCaptureFixture) -> None:
    """A 429 or 5xx text names the operator's organisation, project or quota; a 400's is about the
    client's request (found by a security review)."""
    quota = b'{"error": {"message": "Rate limit reached for gpt-4o in organization org-Secret123 on tokens"}}'
    refused = status_error(429, quota, {}, "openai", None)
    assert "org-Secret123" not in refused.message and "HTTP 429" in refused.message
    assert "org-Secret123" in caplog.text  # the operator still sees it
    too_long = b'{"error": {"message": "This model\'s maximum context length is 8192 tokens"}}'
    assert "maximum context length is 8192" in status_error(400, too_long, {}, "openai", None).message


def test_a_rejected_provider_key_is_a_warning_for_the_operator_with_the_key_masked(
        caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps({"error": {"message": "Incorrect API key provided: sk-live-123", "code": "invalid_api_key"}})
    with caplog.at_level("WARNING", logger="helyx.upstream"):
        refused = status_error(401, body.encode(), {}, "openai", "sk-live-123")
    assert (refused.status, refused.code) == (502, "upstream_auth") and "sk-live" not in refused.message
    logged = [r.getMessage() for r in caplog.records if r.name == "helyx.upstream" and r.levelname == "WARNING"]
    assert logged == ["upstream openai rejected the gateway's provider key (HTTP 401): Incorrect API key provided: ***"]


@pytest.mark.parametrize(("status", "code"), [(400, "invalid_type"), (422, None)])
def test_a_refusal_naming_a_part_of_the_conversation_is_the_clients_400(status: int, code: str | None) -> None:
    """An image part sent to a model without vision was a 502: the SDK raised InternalServerError
    for the caller's own mistake."""
    body = json.dumps({"error": {"message": "Invalid content type. image_url is only supported by certain models.",
                                 "type": "invalid_request_error", "param": "messages.[0].content.[1].type",
                                 "code": code}}).encode()
    refused = status_error(status, body, {}, "openai", None)
    assert isinstance(refused, UpstreamRejectedRequest) and not refused.retryable
    assert (refused.status, refused.code, refused.param) == (
        400, code or "upstream_invalid_request", "messages.[0].content.[1].type")
    assert refused.message.endswith("image_url is only supported by certain models.")
    about_the_account = json.dumps({"error": {"message": "Your organization cannot use images.",
                                              "param": "messages.[0].content"}}).encode()
    assert status_error(400, about_the_account, {}, "openai", None).status == 502


@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_an_error_body_nested_too_deep_to_parse_is_an_upstream_error_not_a_500(status: int) -> None:
    """json.loads raises RecursionError, not ValueError, on `[[[[...`: a misbehaving proxy's body
    was a 500 with a traceback instead of the upstream error it is (a review)."""
    refused = status_error(status, b"[" * 100_000, {}, "vendor", None)
    assert refused.status in (400, 502) and refused.retryable == (status != 400)
    with pytest.raises(UpstreamError, match="malformed JSON"):
        parse_json(b"[" * 100_000, "vendor")


def test_an_answer_too_deep_to_handle_is_a_bad_response_not_a_500() -> None:
    """A stream chunk nested just under the parser's limit parsed, then failed one level deeper
    (re-serialised for its message) with RecursionError: a 500 (a review)."""
    from common.providers.error_blocks import malformed_answers

    with pytest.raises(UpstreamError) as raised, malformed_answers("vendor"):
        raise RecursionError("maximum recursion depth exceeded")
    assert raised.value.code == "upstream_bad_response"
