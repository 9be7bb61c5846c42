"""The failure contract every chat adapter keeps, checked for each against its fake upstream."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from common.errors import UpstreamError, UpstreamTimeout
from common.providers.anthropic import AnthropicProvider
from common.providers.base import ChatProvider
from common.providers.gemini import GeminiChatProvider
from common.providers.http import UpstreamHTTPError, build_http_client
from common.providers.openai_compat import OpenAICompatProvider
from tests.common.providers.helpers import API_KEY, chat_request, collect, text_of
from tests.fakes import Behaviour, FakeUpstream
from tests.ports import refusing_port

pytestmark = pytest.mark.anyio

VENDORS: dict[str, tuple[str, Any]] = {
    "openai": ("openai_fake", OpenAICompatProvider),
    "anthropic": ("anthropic_fake", AnthropicProvider),
    "gemini": ("gemini_fake", GeminiChatProvider),
}


@pytest.fixture(params=list(VENDORS))
def vendor(request: pytest.FixtureRequest) -> tuple[FakeUpstream, Any]:
    fixture, provider_class = VENDORS[request.param]
    return request.getfixturevalue(fixture), provider_class


async def call(provider: ChatProvider, mode: str) -> None:
    """Make one call that is expected to fail before any output; return only if it did not."""
    if mode == "complete":
        await provider.complete(chat_request())
        return
    deltas, error = await collect(provider, chat_request())
    assert deltas == []
    if error is not None:
        raise error


@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize("status", [429, 500, 503])
async def test_rate_limits_and_server_errors_are_retryable_and_their_text_is_the_operators(
    vendor: tuple[FakeUpstream, Any], client: httpx.AsyncClient, mode: str, status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, provider_class = vendor
    fake.behaviour = Behaviour(fail_first=1, fail_status=status, retry_after="7",
                               error_message="Slow down please")
    with pytest.raises(UpstreamHTTPError) as caught:
        await call(provider_class(client, fake.base_url, API_KEY), mode)
    assert caught.value.retryable is True
    assert caught.value.upstream_status == status
    assert caught.value.retry_after == 7.0
    assert "Slow down please" not in caught.value.message  # it names the operator's account, not the request
    assert f"HTTP {status}" in caught.value.message and "Slow down please" in caplog.text


@pytest.mark.parametrize("mode", ["complete", "stream"])
@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_provider_key_is_not_retryable_and_never_shown(
    vendor: tuple[FakeUpstream, Any], client: httpx.AsyncClient, mode: str, status: int
) -> None:
    fake, provider_class = vendor
    fake.behaviour = Behaviour(fail_first=1, fail_status=status,
                               error_message=f"Incorrect API key provided: {API_KEY}")
    with pytest.raises(UpstreamError) as caught:
        await call(provider_class(client, fake.base_url, API_KEY), mode)
    assert caught.value.retryable is False
    assert caught.value.code == "upstream_auth"
    assert caught.value.status == 502
    assert "credentials" in caught.value.message
    assert API_KEY not in caught.value.message


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_bad_request_is_not_retryable_and_quotes_the_vendor_with_the_key_masked(
    vendor: tuple[FakeUpstream, Any], client: httpx.AsyncClient, mode: str
) -> None:
    fake, provider_class = vendor
    fake.behaviour = Behaviour(fail_first=1, fail_status=400,
                               error_message=f"max_tokens is too large (key {API_KEY})")
    with pytest.raises(UpstreamError) as caught:
        await call(provider_class(client, fake.base_url, API_KEY), mode)
    assert caught.value.retryable is False
    assert caught.value.upstream_status == 400
    assert "max_tokens is too large (key ***)" in caught.value.message
    assert API_KEY not in caught.value.message


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_an_upstream_that_does_not_answer_in_time_raises_upstream_timeout(
    vendor: tuple[FakeUpstream, Any], mode: str
) -> None:
    fake, provider_class = vendor
    fake.behaviour = Behaviour(hang=3.0)
    async with build_http_client(connect_timeout=1.0, read_timeout=0.3) as short_client:
        with pytest.raises(UpstreamTimeout) as caught:
            await call(provider_class(short_client, fake.base_url, API_KEY), mode)
    assert caught.value.retryable is True
    assert caught.value.status == 504


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_an_unreachable_upstream_is_retryable(
    vendor: tuple[FakeUpstream, Any], client: httpx.AsyncClient, mode: str
) -> None:
    _, provider_class = vendor
    with refusing_port() as port, pytest.raises(UpstreamError) as caught:
        await call(provider_class(client, f"http://127.0.0.1:{port}", API_KEY), mode)
    assert caught.value.retryable is True
    assert caught.value.code == "upstream_unreachable"


async def test_a_dropped_connection_mid_stream_raises_after_the_earlier_deltas(
    vendor: tuple[FakeUpstream, Any], client: httpx.AsyncClient
) -> None:
    fake, provider_class = vendor
    fake.behaviour = Behaviour(chunks=["one ", "two ", "three ", "four"], drop_after_chunks=2)
    deltas, error = await collect(provider_class(client, fake.base_url, API_KEY), chat_request())
    assert text_of(deltas) == "one two "
    assert all(d.finish_reason is None for d in deltas)
    assert isinstance(error, UpstreamError)


async def test_closing_the_stream_closes_the_upstream_connection(
    vendor: tuple[FakeUpstream, Any], client: httpx.AsyncClient
) -> None:
    fake, provider_class = vendor
    fake.behaviour = Behaviour(chunks=[f"word{i} " for i in range(200)], chunk_delay=0.02)
    stream = provider_class(client, fake.base_url, API_KEY).stream(chat_request())
    first = await anext(stream)
    assert first.content == "word0 "
    await stream.aclose()
    assert await fake.wait_until(lambda: fake.streams_closed == 1)
    assert fake.streams_opened == 1
    assert fake.streams_completed == 0  # cut by us, not sent to the end


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_an_answer_without_usage_reports_none(
    vendor: tuple[FakeUpstream, Any], client: httpx.AsyncClient, mode: str
) -> None:
    fake, provider_class = vendor
    fake.behaviour = Behaviour(omit_usage=True)
    provider = provider_class(client, fake.base_url, API_KEY)
    if mode == "complete":
        result = await provider.complete(chat_request())
        assert result.content == fake.behaviour.answer
        assert result.usage is None
    else:
        deltas, error = await collect(provider, chat_request())
        assert error is None
        assert text_of(deltas) == fake.behaviour.answer
        assert deltas[-1].finish_reason == "stop" or deltas[-2].finish_reason == "stop"
        assert all(d.usage is None for d in deltas)
