"""OpenAICompatProvider when a vendor answers otherwise than OpenAI does: MiniMax's failures
inside an HTTP 200 (`base_resp`), a JSON body to a stream request, a stream labelled JSON, and
Unicode line separators inside a streamed chunk."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from common.errors import UpstreamError, UpstreamRejectedRequest
from common.providers.base import ChatDelta
from common.providers.http import UpstreamClient
from common.providers.openai_compat import OpenAICompatProvider
from tests.common.providers.helpers import API_KEY, chat_request, collect, failure_of, text_of
from tests.fakes import Behaviour, FakeUpstream

pytestmark = pytest.mark.anyio


async def _streamed(content: Any, content_type: str) -> tuple[list[ChatDelta], UpstreamError | None]:
    """The adapter's deltas (and error) for a stream request answered 200 with `content`."""
    transport = httpx.MockTransport(lambda request: httpx.Response(
        200, content=content, headers={"content-type": content_type}))
    async with UpstreamClient(transport=transport) as mock_client:
        return await collect(OpenAICompatProvider(mock_client, "http://up.test/v1", None), chat_request())


@pytest.mark.parametrize(("status", "said", "code", "retryable"), [
    (1008, "insufficient balance", "upstream_quota_exhausted", False),
    (2056, "usage limit exceeded", "upstream_quota_exhausted", False),
    (1004, "not authorized", "upstream_auth", False),
    (2049, "invalid api key", "upstream_auth", False),
    (1002, "rate limit", "upstream_rate_limited", True),
    (1039, "token limit", "upstream_rate_limited", True),
    (1000, "unknown error", "upstream_error", True),
    (1024, "internal error", "upstream_error", True),
    (2013, "invalid params, max_tokens out of range", "upstream_error", False),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_minimax_failures_inside_a_200_are_the_errors_their_status_says(
    openai_fake: FakeUpstream, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture,
    status: int, said: str, code: str, retryable: bool, stream: bool,
) -> None:
    """MiniMax answers HTTP 200 with `base_resp` {status_code, status_msg} and no choices (a stream
    request too, as one JSON body): each was a 502 upstream_bad_response, its reason lost."""
    openai_fake.behaviour = Behaviour(minimax_status=(status, said))
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY)
    deltas, error = await failure_of(provider, chat_request(), stream=stream)
    assert deltas == []
    assert isinstance(error, UpstreamError) and not isinstance(error, UpstreamRejectedRequest)
    assert (error.code, error.retryable, error.status) == (code, retryable, 502)
    assert str(status) in error.message and said in caplog.text  # the operator's log has MiniMax's words
    assert (said in error.message) == (status == 2013)  # quoted to the client only when about the request


@pytest.mark.parametrize("stream", [False, True])
async def test_a_minimax_flagged_prompt_is_a_400_the_client_can_mend(
    openai_fake: FakeUpstream, client: httpx.AsyncClient, stream: bool,
) -> None:
    openai_fake.behaviour = Behaviour(minimax_status=(1026, "input new_sensitive"))
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY)
    _, error = await failure_of(provider, chat_request(), stream=stream)
    assert isinstance(error, UpstreamRejectedRequest)
    assert (error.status, error.code, error.param, error.retryable) == (400, "content_policy_violation",
                                                                         "messages", False)


async def test_a_minimax_answer_with_a_succeeding_base_resp_is_read_as_it_is() -> None:
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
              "base_resp": {"status_code": 0, "status_msg": ""}}
    chunks = (b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}], '
              b'"base_resp": {"status_code": 0, "status_msg": ""}}\n\ndata: [DONE]\n\n')

    def answer_for(request: httpx.Request) -> httpx.Response:
        if b'"stream"' in request.content:
            return httpx.Response(200, content=chunks, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=answer)

    async with UpstreamClient(transport=httpx.MockTransport(answer_for)) as mock_client:
        provider = OpenAICompatProvider(mock_client, "http://up.test/v1", None)
        assert (await provider.complete(chat_request())).content == "Hi"
        deltas, error = await collect(provider, chat_request())
    assert error is None and text_of(deltas) == "Hi"


async def test_a_minimax_failure_in_a_chunk_ends_the_stream_with_its_error() -> None:
    chunks = (b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]}\n\n'
              b'data: {"choices": [], "base_resp": {"status_code": 1027, "status_msg": "output new_sensitive"}}\n\n')
    deltas, error = await _streamed(chunks, "text/event-stream")
    assert text_of(deltas) == "Hi"
    assert isinstance(error, UpstreamError) and error.retryable is False and "1027" in error.message


@pytest.mark.parametrize("content_type", ["text/event-stream", "application/json", "application/json; charset=utf-8"])
async def test_a_stream_is_read_as_events_whatever_its_content_type_says(content_type: str) -> None:
    """Self-hosted and proxy servers label SSE application/json; such streams worked, and a
    MiniMax change that read every application/json answer as one JSON body broke them (a diff
    review)."""
    sse = (b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    deltas, error = await _streamed(sse, content_type)
    assert error is None and text_of(deltas) == "Hi"


async def test_a_pretty_printed_json_failure_to_a_stream_request_is_its_error() -> None:
    body = json.dumps({"choices": None, "base_resp": {"status_code": 1008, "status_msg": "insufficient balance"}},
                      indent=2).encode()
    _, error = await _streamed(body, "text/event-stream")
    assert isinstance(error, UpstreamError) and error.code == "upstream_quota_exhausted"


async def test_a_stream_request_answered_with_text_that_is_no_json_ended_early() -> None:
    _, error = await _streamed(b"upstream hiccup\n", "text/plain")
    assert isinstance(error, UpstreamError) and error.retryable is True


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\x0b", "\x1c"])
@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
async def test_a_streamed_answer_holding_unicode_line_separators_is_read_whole(separator: str, line_end: str) -> None:
    """JSON holds U+2028, U+2029 and U+0085 raw in strings; SSE ends lines at CR, LF or CRLF only.
    Read with httpx's aiter_lines (str.splitlines), such a chunk was cut in two: malformed JSON."""
    def chunk(content: str | None, finish: str | None = None) -> str:
        delta = {} if content is None else {"content": content}
        event = json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}, ensure_ascii=False)
        return f"data: {event}{line_end}{line_end}"

    body = (chunk(f"a{separator}b") + chunk(None, "stop") + f"data: [DONE]{line_end}{line_end}").encode()

    async def in_pieces() -> Any:  # bytes split everywhere, a CR apart from its LF included
        for i in range(0, len(body), 3):
            yield body[i:i + 3]

    deltas, error = await _streamed(in_pieces(), "text/event-stream")
    assert error is None and text_of(deltas) == f"a{separator}b"


@pytest.mark.parametrize("charset", ["", "; charset=iso-8859-1"])
async def test_a_stream_starting_with_a_bom_keeps_its_first_event_and_is_read_as_utf8(charset: str) -> None:
    """SSE (WHATWG): a leading U+FEFF is skipped and the stream is UTF-8 whatever its header says.
    The BOM made the first line no field: a vendor's first text was lost (a review)."""
    first = json.dumps({"choices": [{"index": 0, "delta": {"content": "Héllo"}, "finish_reason": None}]},
                       ensure_ascii=False)
    last = json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    body = "\ufeff".encode() + f"data: {first}\n\ndata: {last}\n\ndata: [DONE]\n\n".encode()
    deltas, error = await _streamed(body, f"text/event-stream{charset}")
    assert error is None and text_of(deltas) == "Héllo"
