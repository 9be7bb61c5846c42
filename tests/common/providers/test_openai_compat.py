"""OpenAICompatProvider against the fake OpenAI upstream over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from common.errors import UpstreamError
from common.providers.base import ChatProvider, Usage
from common.providers.http import UpstreamClient
from common.providers.openai_compat import OpenAICompatProvider
from tests.common.providers.helpers import API_KEY, chat_request, collect, text_of
from tests.fakes import Behaviour, FakeUpstream

pytestmark = pytest.mark.anyio

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "text", "text": "Describe"},
                                 {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
]


def test_it_implements_the_chat_provider_protocol() -> None:
    assert isinstance(OpenAICompatProvider(UpstreamClient(), "http://x", None), ChatProvider)


async def test_a_plain_answer_is_read_with_usage_and_fingerprint(
    openai_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    result = await OpenAICompatProvider(client, openai_fake.base_url, API_KEY).complete(chat_request())
    assert result.content == "Hello! How can I help you today?"
    assert result.finish_reason == "stop"
    assert result.usage == Usage(prompt_tokens=12, completion_tokens=9)
    assert result.system_fingerprint == "fp_fake"


async def test_the_request_forwards_every_set_field_and_the_bearer_key(
    openai_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    request = chat_request(model="gpt-4o", messages=MESSAGES, max_tokens=99, temperature=1.3,
                           top_p=0.9, stop=["END"], presence_penalty=0.5, frequency_penalty=-0.5,
                           user="u-1")
    await OpenAICompatProvider(client, openai_fake.base_url + "/", API_KEY).complete(request)
    sent = openai_fake.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.json == {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 99, "temperature": 1.3,
                         "top_p": 0.9, "stop": ["END"], "presence_penalty": 0.5,
                         "frequency_penalty": -0.5, "user": "u-1"}


async def test_unset_fields_and_a_missing_key_are_left_out(
    openai_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    await OpenAICompatProvider(client, openai_fake.base_url, None).complete(chat_request())
    sent = openai_fake.last_request
    assert "authorization" not in sent.headers
    assert set(sent.json) == {"model", "messages", "max_tokens"}


async def test_a_stream_yields_the_content_then_the_finish_then_the_usage(
    openai_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    deltas, error = await collect(OpenAICompatProvider(client, openai_fake.base_url, API_KEY),
                                  chat_request())
    assert error is None
    assert text_of(deltas) == "Hello! How can I help you today?"
    assert len([d for d in deltas if d.content]) == 7
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    assert deltas[-1].usage == Usage(12, 9)
    assert all(d.usage is None for d in deltas[:-1])
    sent = openai_fake.last_request.json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("usage_in", ["choice", "x_groq"])
async def test_stream_usage_where_moonshot_and_groq_put_it_is_read(
    openai_fake: FakeUpstream, client: httpx.AsyncClient, usage_in: str
) -> None:
    """Moonshot sends it in the finish chunk's choices[0].usage, Groq (before include_usage) in
    x_groq.usage: it was dropped there, and the charge estimated from the text instead."""
    openai_fake.behaviour = Behaviour(prompt_tokens=19, completion_tokens=13, usage_in=usage_in)
    deltas, error = await collect(OpenAICompatProvider(client, openai_fake.base_url, API_KEY), chat_request())
    assert error is None and [d.usage for d in deltas if d.usage] == [Usage(19, 13)]
    assert deltas[-1].finish_reason == "stop"


@pytest.mark.parametrize(("completion", "reasoning", "apart", "billed"), [
    (9, 40, True, 49),  # xAI: completion_tokens 9 + reasoning_tokens 40 = total - prompt
    (49, 40, False, 49),  # OpenAI: the 40 are already among the 49
    (9, 0, True, 9),
])
async def test_reasoning_tokens_a_vendor_counts_apart_are_added_to_the_completion(
    openai_fake: FakeUpstream, client: httpx.AsyncClient, completion: int, reasoning: int, apart: bool, billed: int
) -> None:
    openai_fake.behaviour = Behaviour(prompt_tokens=12, completion_tokens=completion, thoughts_tokens=reasoning,
                                      reasoning_apart=apart)
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY)
    stated = reasoning or None  # the fake states the reasoning tokens only when there are some
    assert (await provider.complete(chat_request())).usage == Usage(12, billed, reasoning_tokens=stated)
    deltas, error = await collect(provider, chat_request())
    assert error is None and [d.usage for d in deltas if d.usage] == [Usage(12, billed, reasoning_tokens=stated)]


async def test_cached_prompt_tokens_are_kept_as_a_detail_and_billed_as_prompt(
    openai_fake: FakeUpstream, client: httpx.AsyncClient,
) -> None:
    openai_fake.behaviour = Behaviour(prompt_tokens=12, completion_tokens=9, cached_tokens=8)
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY)
    assert (await provider.complete(chat_request())).usage == Usage(12, 9, cached_tokens=8)


async def test_a_length_finish_is_passed_through(
    openai_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    openai_fake.behaviour = Behaviour(finish="length")
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY)
    assert (await provider.complete(chat_request())).finish_reason == "length"
    deltas, _ = await collect(provider, chat_request())
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]


@pytest.mark.parametrize(("vendor", "openai"), [
    ("sensitive", "content_filter"),  # Zhipu: its safety review cut the answer
    ("model_context_window_exceeded", "length"),  # Zhipu
    ("model_length", "length"),  # Mistral: the context ran out (a diff review)
    ("eos", "stop"),  # anything else outside OpenAI's list: an SDK with strict types refuses it
])
async def test_a_vendors_own_finish_reason_is_put_in_openais_terms(
    openai_fake: FakeUpstream, client: httpx.AsyncClient, vendor: str, openai: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    openai_fake.behaviour = Behaviour(finish=vendor)
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY)
    assert (await provider.complete(chat_request())).finish_reason == openai
    assert ("unknown finish_reason 'eos'" in caplog.text) == (vendor == "eos")  # a new value gets noticed
    deltas, _ = await collect(provider, chat_request())
    assert [d.finish_reason for d in deltas if d.finish_reason] == [openai]


@pytest.mark.parametrize("reason", ["network_error", "insufficient_system_resource"])  # Zhipu, DeepSeek
async def test_a_finish_reason_saying_the_inference_failed_is_a_failed_call(
    openai_fake: FakeUpstream, client: httpx.AsyncClient, reason: str
) -> None:
    """Zhipu's "network_error" ends a partial answer whose inference failed: it was passed on as a
    finished answer, and charged; a failed call costs nothing."""
    openai_fake.behaviour = Behaviour(finish=reason)
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY)
    with pytest.raises(UpstreamError) as caught:
        await provider.complete(chat_request())
    assert caught.value.retryable
    deltas, error = await collect(provider, chat_request())
    assert text_of(deltas) == "Hello! How can I help you today?" and isinstance(error, UpstreamError)
    assert not any(d.finish_reason for d in deltas)


async def test_reasoning_pieces_are_thinking_not_content(openai_fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    openai_fake.behaviour = Behaviour(thinking=["Let me ", "think."])
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY)
    deltas, error = await collect(provider, chat_request())
    assert error is None
    assert [d.thinking for d in deltas if d.thinking] == ["Let me ", "think."]
    assert text_of(deltas) == "Hello! How can I help you today?"
    result = await provider.complete(chat_request())  # a plain answer's `reasoning_content`
    assert result.reasoning == "Let me think." and result.content == "Hello! How can I help you today?"


def _thinking_turn() -> list[dict[str, object]]:
    call = {"id": "functions.get_weather:0", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    return [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": "I should look."},
            {"role": "tool", "tool_call_id": call["id"], "content": "Sunny"}]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_earlier_turns_reasoning_goes_back_only_to_a_vendor_that_wants_it(
    openai_fake: FakeUpstream, client: httpx.AsyncClient, stream: bool,
) -> None:
    """Moonshot's thinking models refuse a tool-call turn sent back without its `reasoning_content`
    (the fake answers that 400 too); a vendor not marked `replay_reasoning` never gets the field."""
    openai_fake.behaviour = Behaviour(require_reasoning=True)
    request = chat_request(messages=_thinking_turn())

    async def call(provider: OpenAICompatProvider) -> None:
        if stream:
            _, error = await collect(provider, request)
            if error is not None:
                raise error
        else:
            await provider.complete(request)

    with pytest.raises(UpstreamError):
        await call(OpenAICompatProvider(client, openai_fake.base_url, API_KEY))
    assert "reasoning_content" not in openai_fake.last_request.json["messages"][1]
    await call(OpenAICompatProvider(client, openai_fake.base_url, API_KEY, replay_reasoning=True))
    assert openai_fake.last_request.json["messages"][1]["reasoning_content"] == "I should look."
    assert request.messages[1]["reasoning_content"] == "I should look."  # the request itself is left as it came


async def test_an_error_object_mid_stream_raises_after_the_earlier_deltas(
    openai_fake: FakeUpstream, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    openai_fake.behaviour = Behaviour(chunks=["a", "b", "c"], error_after_chunks=2,
                                      error_message="The server had an error")
    deltas, error = await collect(OpenAICompatProvider(client, openai_fake.base_url, API_KEY),
                                  chat_request())
    assert text_of(deltas) == "ab"
    assert isinstance(error, UpstreamError)
    assert "The server had an error" not in error.message and "The server had an error" in caplog.text


async def test_an_answer_without_choices_is_an_upstream_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"choices": []}))
    async with UpstreamClient(transport=transport) as mock_client:
        with pytest.raises(UpstreamError):
            await OpenAICompatProvider(mock_client, "http://up.test/v1", None).complete(chat_request())


async def test_a_stream_that_ends_without_finish_or_done_is_an_error() -> None:
    body = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]}\n\n'
    transport = httpx.MockTransport(lambda request: httpx.Response(
        200, content=body, headers={"content-type": "text/event-stream"}))
    async with UpstreamClient(transport=transport) as mock_client:
        deltas, error = await collect(OpenAICompatProvider(mock_client, "http://up.test/v1", None),
                                      chat_request())
    assert text_of(deltas) == "Hi"
    assert isinstance(error, UpstreamError)
    assert error.retryable is True


async def test_fields_a_strict_vendor_refuses_are_left_out_of_plain_and_streamed_calls(
    openai_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Mistral answers 422 to `user`, `stream_options` and a message's `name`: every stream to it failed."""
    named = [{"role": "user", "content": "hi", "name": "alice"}]
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY,
                                    unsent_fields=["user", "stream_options", "name"])
    await provider.complete(chat_request(messages=named, user="u-1", temperature=0.5))
    assert openai_fake.last_request.json == {"model": "test-model", "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 64, "temperature": 0.5}
    openai_fake.behaviour.usage_in = "finish"  # as Mistral sends it, unasked
    deltas, error = await collect(provider, chat_request(messages=named, user="u-1"))
    assert error is None and deltas[-1].usage == Usage(prompt_tokens=12, completion_tokens=9)
    sent = openai_fake.last_request.json
    assert sent["stream"] is True and "stream_options" not in sent and "user" not in sent
    assert sent["messages"] == [{"role": "user", "content": "hi"}] and named[0]["name"] == "alice"


async def test_alternate_turns_sends_one_system_message_then_strictly_alternating_turns(
    openai_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Perplexity answers 400 "user and assistant roles should be alternating" otherwise (a 502 here)."""
    image = {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hello!", "name": "alice"},
        {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
        {"role": "assistant", "content": "Fine."},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Look:"},
        {"role": "user", "content": [image]},
    ]
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY, alternate_turns=True)
    await provider.complete(chat_request(messages=messages))
    assert openai_fake.last_request.json["messages"] == [
        {"role": "system", "content": "Be terse.\n\nAnswer in French."},
        {"role": "user", "content": "Hello!\n\nHow are you?"},
        {"role": "assistant", "content": "Fine."},
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, image]},
    ]
    await OpenAICompatProvider(client, openai_fake.base_url, API_KEY).complete(chat_request(messages=messages))
    assert len(openai_fake.last_request.json["messages"]) == len(messages)  # others get the conversation as it is


async def test_limit_field_sends_the_output_limit_under_max_completion_tokens(
    openai_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """OpenAI's reasoning models (o-series, gpt-5) answer 400 to `max_tokens`: with the catalog
    pointing one of them at OpenAI, every call was a 502 the caller could not fix."""
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY, limit_field="max_completion_tokens")
    await provider.complete(chat_request(max_tokens=77))
    sent = openai_fake.last_request.json
    assert sent["max_completion_tokens"] == 77 and "max_tokens" not in sent
    deltas, error = await collect(provider, chat_request(max_tokens=55))
    assert error is None and deltas
    sent = openai_fake.last_request.json
    assert sent["stream"] is True and sent["max_completion_tokens"] == 55 and "max_tokens" not in sent


async def test_extra_body_is_sent_with_every_call_and_minimax_thinking_apart_is_not_content(
    openai_fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """MiniMax's M2 models answer `<think>...</think>` first in the content unless the request says
    `reasoning_split: true` (the built-in catalog's extra_body for it); the thinking then comes in
    `reasoning_details`, which is thinking (shown apart, as `reasoning_content` is), not content."""
    openai_fake.behaviour = Behaviour(minimax_thinking="The user greets me.")
    provider = OpenAICompatProvider(client, openai_fake.base_url, API_KEY, extra_body={"reasoning_split": True})
    result = await provider.complete(chat_request(max_tokens=40))
    sent = openai_fake.last_request.json
    assert sent["reasoning_split"] is True and sent["max_tokens"] == 40 and sent["model"] == "test-model"
    assert result.content == "Hello! How can I help you today?" and result.reasoning == "The user greets me."
    deltas, error = await collect(provider, chat_request())
    assert error is None and openai_fake.last_request.json["reasoning_split"] is True
    assert "".join(d.thinking for d in deltas) == "The user greets me."
    assert text_of(deltas) == "Hello! How can I help you today?"
    # without it, the fake answers as MiniMax does: the thinking inside the content
    unsplit = await OpenAICompatProvider(client, openai_fake.base_url, API_KEY).complete(chat_request())
    assert unsplit.content.startswith("<think>The user greets me.</think>")
