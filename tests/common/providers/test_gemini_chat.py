"""GeminiChatProvider: request translation, and answers from the fake Gemini API over HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

from common.errors import InvalidRequest, UpstreamError, UpstreamRejectedRequest
from common.providers.base import ChatProvider, Usage
from common.providers.gemini import GeminiChatProvider, build_body
from common.providers.http import UpstreamClient
from tests.common.providers.helpers import API_KEY, chat_request, collect, failure_of, text_of
from tests.fakes import Behaviour, FakeUpstream

pytestmark = pytest.mark.anyio


def test_it_implements_the_chat_provider_protocol() -> None:
    assert isinstance(GeminiChatProvider(UpstreamClient(), "http://x", None), ChatProvider)


def test_system_becomes_system_instruction_and_turns_alternate_user_and_model() -> None:
    body = build_body(chat_request(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "One"},
        {"role": "user", "content": [
            {"type": "text", "text": "Two"},
            {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklG"}},
            {"type": "image_url", "image_url": {"url": "https://img.test/cat.png?size=2"}},
        ]},
    ]))
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Hello."}]},
        {"role": "user", "parts": [
            {"text": "One"}, {"text": "Two"},
            {"inlineData": {"mimeType": "image/webp", "data": "UklG"}},
            {"fileData": {"mimeType": "image/png", "fileUri": "https://img.test/cat.png?size=2"}},
        ]},
    ]


def test_system_messages_alone_are_sent_as_the_user_turn() -> None:
    body = build_body(chat_request(messages=[{"role": "developer", "content": "Greet me."}]))
    assert "systemInstruction" not in body
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Greet me."}]}]


def test_a_conversation_with_no_text_or_image_is_refused_before_any_call() -> None:
    provider = GeminiChatProvider(UpstreamClient(), "http://x", None)
    provider.refuse_unsendable([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://e/x.png"}}]}])
    with pytest.raises(InvalidRequest) as refused:
        provider.refuse_unsendable([{"role": "user", "content": ""}])
    assert refused.value.param == "messages"


def test_sampling_settings_go_to_generation_config_and_zero_penalties_are_left_out() -> None:
    body = build_body(chat_request(max_tokens=77, temperature=1.4, top_p=0.8, stop=["END"],
                                   presence_penalty=0.0, frequency_penalty=0.3))
    assert body["generationConfig"] == {"maxOutputTokens": 77, "temperature": 1.4, "topP": 0.8,
                                        "stopSequences": ["END"], "frequencyPenalty": 0.3}
    assert "systemInstruction" not in body


async def test_a_plain_answer_uses_generate_content_with_the_key_in_a_header(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    provider = GeminiChatProvider(client, gemini_fake.base_url, API_KEY)
    result = await provider.complete(chat_request(model="models/gemini-2.5-flash"))
    assert result.content == "Hello! How can I help you today?"
    assert result.finish_reason == "stop"
    assert result.usage == Usage(12, 9)
    sent = gemini_fake.last_request
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == API_KEY
    assert sent.query == {}


async def test_a_stream_uses_sse_and_ends_with_finish_and_usage(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    deltas, error = await collect(GeminiChatProvider(client, gemini_fake.base_url, API_KEY),
                                  chat_request(model="gemini-2.5-flash"))
    assert error is None
    assert text_of(deltas) == "Hello! How can I help you today?"
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage == Usage(12, 9)
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    sent = gemini_fake.last_request
    assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert sent.query == {"alt": "sse"}


async def test_thinking_tokens_count_as_completion_tokens(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    gemini_fake.behaviour = Behaviour(prompt_tokens=5, completion_tokens=9, thoughts_tokens=40)
    provider = GeminiChatProvider(client, gemini_fake.base_url, API_KEY)
    assert (await provider.complete(chat_request())).usage == Usage(5, 49, reasoning_tokens=40)
    deltas, _ = await collect(provider, chat_request())
    assert deltas[-1].usage == Usage(5, 49, reasoning_tokens=40)


@pytest.mark.parametrize(("reason", "finish"), [
    ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter")])
async def test_finish_reasons_map_to_openai_terms(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient, reason: str, finish: str
) -> None:
    gemini_fake.behaviour = Behaviour(finish=reason)
    provider = GeminiChatProvider(client, gemini_fake.base_url, API_KEY)
    assert (await provider.complete(chat_request())).finish_reason == finish
    deltas, _ = await collect(provider, chat_request())
    assert deltas[-1].finish_reason == finish


async def test_googles_invalid_key_400_is_treated_as_rejected_credentials(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    gemini_fake.behaviour = Behaviour(fail_first=1, fail_status=400, error_reason="API_KEY_INVALID",
                                      error_message="API key not valid. Please pass a valid API key.")
    with pytest.raises(UpstreamError) as caught:
        await GeminiChatProvider(client, gemini_fake.base_url, API_KEY).complete(chat_request())
    assert caught.value.code == "upstream_auth"
    assert caught.value.retryable is False


async def test_an_error_event_mid_stream_raises_after_the_earlier_deltas(
    gemini_fake: FakeUpstream, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    gemini_fake.behaviour = Behaviour(chunks=["a", "b", "c"], error_after_chunks=2,
                                      error_message="Internal error")
    deltas, error = await collect(GeminiChatProvider(client, gemini_fake.base_url, API_KEY),
                                  chat_request())
    assert text_of(deltas) == "ab"
    assert isinstance(error, UpstreamError)
    assert "Internal error" not in error.message and "Internal error" in caplog.text


@pytest.mark.parametrize("stream", [False, True])
async def test_a_blocked_prompt_is_the_clients_400_not_an_answer(stream: bool) -> None:
    """Google's promptFeedback.blockReason, no candidates: the prompt was refused before any answer.
    It was a 200 with empty content, charged the prompt (an image's blocked prompt is refunded)."""
    blocked = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 4}}
    body = json.dumps(blocked).encode()
    transport = httpx.MockTransport(lambda request: httpx.Response(
        200, content=b"data: " + body + b"\r\n\r\n" if stream else body,
        headers={"content-type": "text/event-stream" if stream else "application/json"}))
    async with UpstreamClient(transport=transport) as mock_client:
        provider = GeminiChatProvider(mock_client, "http://up.test/v1beta", None)
        deltas, error = await failure_of(provider, chat_request(), stream=stream)
        assert deltas == []
    assert isinstance(error, UpstreamRejectedRequest)
    assert (error.status, error.code, error.param, error.retryable) == (400, "content_filtered",
                                                                        "messages", False)
    assert "PROHIBITED_CONTENT" in error.message
