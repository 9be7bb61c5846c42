"""AnthropicProvider: request translation, and answers from the fake Messages API over HTTP."""

from __future__ import annotations

import httpx
import pytest

from common.errors import InvalidRequest, UpstreamError
from common.providers.anthropic import AnthropicProvider, build_body
from common.providers.base import ChatProvider, Usage
from common.providers.http import UpstreamClient
from tests.common.providers.helpers import API_KEY, chat_request, collect, text_of
from tests.fakes import Behaviour, FakeUpstream

pytestmark = pytest.mark.anyio


def test_it_implements_the_chat_provider_protocol() -> None:
    assert isinstance(AnthropicProvider(UpstreamClient(), "http://x", None), ChatProvider)


def test_system_messages_go_to_the_top_and_same_role_turns_are_merged() -> None:
    body = build_body(chat_request(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": [{"type": "text", "text": "Still there?"}]},
        {"role": "developer", "content": "Answer in French."},
        {"role": "assistant", "content": "Oui."},
        {"role": "assistant", "content": ""},
    ]), stream=False)
    assert body["system"] == "Be brief.\n\nAnswer in French."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Still there?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Oui."}]},
    ]


def test_system_messages_alone_are_sent_as_the_user_turn_and_blank_text_is_dropped() -> None:
    body = build_body(chat_request(messages=[{"role": "system", "content": "Greet me."},
                                             {"role": "assistant", "content": "  "}]), stream=False)
    assert "system" not in body
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Greet me."}]}]


def test_a_conversation_with_no_text_or_image_is_refused_before_any_call() -> None:
    provider = AnthropicProvider(UpstreamClient(), "http://x", None)
    provider.refuse_unsendable([{"role": "system", "content": "Greet me."}])  # sendable: nothing raised
    with pytest.raises(InvalidRequest) as refused:
        provider.refuse_unsendable([{"role": "system", "content": " "}, {"role": "user", "content": [
            {"type": "text", "text": ""}]}, {"role": "assistant", "content": None}])
    assert refused.value.param == "messages"


def test_images_become_base64_or_url_sources() -> None:
    body = build_body(chat_request(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://img.test/cat.png"}},
        {"type": "text", "text": "What are these?"},
    ]}]), stream=False)
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://img.test/cat.png"}},
        {"type": "text", "text": "What are these?"},
    ]


def test_a_data_url_that_is_not_base64_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        build_body(chat_request(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]}]), stream=False)


@pytest.mark.parametrize(("temperature", "top_p", "expected"), [
    (1.5, None, {"temperature": 1.0}),
    (0.7, 1.0, {"temperature": 0.7}),
    (-0.2, None, {"temperature": 0.0}),
    (0.7, 0.9, {"top_p": 0.9}),
    (None, None, {}),
])
def test_temperature_is_clamped_and_top_p_replaces_it_only_below_one(
    temperature: float | None, top_p: float | None, expected: dict[str, float]
) -> None:
    body = build_body(chat_request(temperature=temperature, top_p=top_p), stream=False)
    assert {k: body[k] for k in ("temperature", "top_p") if k in body} == expected


def test_stop_max_tokens_and_user_are_translated() -> None:
    body = build_body(chat_request(stop=["\n\nHuman:"], max_tokens=321, user="u-9"), stream=True)
    assert body["stop_sequences"] == ["\n\nHuman:"]
    assert body["max_tokens"] == 321
    assert body["metadata"] == {"user_id": "u-9"}
    assert body["stream"] is True


async def test_a_plain_answer_sends_the_version_and_key_headers(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    result = await AnthropicProvider(client, anthropic_fake.base_url, API_KEY).complete(chat_request())
    assert result.content == "Hello! How can I help you today?"
    assert result.finish_reason == "stop"
    assert result.usage == Usage(12, 9)
    sent = anthropic_fake.last_request
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == API_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers


async def test_a_base_url_that_already_names_v1_is_accepted(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    await AnthropicProvider(client, anthropic_fake.base_url + "/v1/", API_KEY).complete(chat_request())
    assert anthropic_fake.last_request.path == "/v1/messages"


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("max_tokens", "length"), ("stop_sequence", "stop"), ("refusal", "content_filter")])
async def test_stop_reasons_map_to_openai_finish_reasons(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient, stop_reason: str, finish: str
) -> None:
    anthropic_fake.behaviour = Behaviour(finish=stop_reason)
    provider = AnthropicProvider(client, anthropic_fake.base_url, API_KEY)
    assert (await provider.complete(chat_request())).finish_reason == finish
    deltas, _ = await collect(provider, chat_request())
    assert deltas[-1].finish_reason == finish


async def test_a_stream_yields_text_deltas_then_finish_with_usage(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    anthropic_fake.behaviour = Behaviour(prompt_tokens=31, completion_tokens=17)
    deltas, error = await collect(AnthropicProvider(client, anthropic_fake.base_url, API_KEY),
                                  chat_request())
    assert error is None
    assert text_of(deltas) == "Hello! How can I help you today?"
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage == Usage(prompt_tokens=31, completion_tokens=17)
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    assert anthropic_fake.last_request.json["stream"] is True


@pytest.mark.parametrize("delta_input_tokens", [False, True])
async def test_cached_prompt_tokens_are_counted_streamed_or_not(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient, delta_input_tokens: bool
) -> None:
    """message_delta's counts are cumulative and may each be left out: an input_tokens there with
    no cache counts had the stream charge 10 prompt tokens where the same call unstreamed paid 5,010."""
    anthropic_fake.behaviour = Behaviour(prompt_tokens=10, cached_tokens=5000, completion_tokens=15,
                                         delta_input_tokens=delta_input_tokens)
    provider = AnthropicProvider(client, anthropic_fake.base_url, API_KEY)
    counted = Usage(prompt_tokens=5010, completion_tokens=15, cached_tokens=5000)  # the cache read a detail too
    assert (await provider.complete(chat_request())).usage == counted
    deltas, error = await collect(provider, chat_request())
    assert error is None and deltas[-1].usage == counted


async def test_an_error_event_mid_stream_raises_after_the_earlier_deltas(
    anthropic_fake: FakeUpstream, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    anthropic_fake.behaviour = Behaviour(chunks=["x", "y", "z"], error_after_chunks=1,
                                         error_message="Overloaded")
    deltas, error = await collect(AnthropicProvider(client, anthropic_fake.base_url, API_KEY),
                                  chat_request())
    assert text_of(deltas) == "x"
    assert isinstance(error, UpstreamError)
    assert error.retryable is True
    assert "Overloaded" not in error.message and "Overloaded" in caplog.text


async def test_overloaded_529_is_retryable(anthropic_fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    anthropic_fake.behaviour = Behaviour(fail_first=1, fail_status=529, error_message="Overloaded")
    with pytest.raises(UpstreamError) as caught:
        await AnthropicProvider(client, anthropic_fake.base_url, API_KEY).complete(chat_request())
    assert caught.value.retryable is True
    assert caught.value.upstream_status == 529
