"""SimulatedChatProvider: deterministic, offline, and counted by its one documented rule."""

from __future__ import annotations

import math
import time

import pytest

from common.providers.base import ChatProvider, Usage
from common.providers.simulated import (
    SYSTEM_FINGERPRINT,
    SimulatedChatProvider,
    simulated_prompt_tokens,
    simulated_tokens,
)
from tests.common.providers.helpers import chat_request, collect, text_of

pytestmark = pytest.mark.anyio

MESSAGES = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_it_implements_the_chat_provider_protocol() -> None:
    assert isinstance(SimulatedChatProvider(), ChatProvider)


def test_the_token_rule_is_a_quarter_of_the_characters_rounded_up_at_least_one() -> None:
    assert [simulated_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 400)] == [1, 1, 1, 2, 100]
    # 16 chars → 4, 30 chars → 8, plus 3 per message
    assert simulated_prompt_tokens(MESSAGES) == (4 + 3) + (8 + 3)


async def test_the_answer_restates_the_question_and_is_deterministic() -> None:
    provider = SimulatedChatProvider()
    first = await provider.complete(chat_request(messages=MESSAGES))
    again = await provider.complete(chat_request(messages=MESSAGES))
    other = await provider.complete(chat_request(messages=[{"role": "user", "content": "Tell me a joke"}]))
    assert first == again
    assert "What is the capital of France?" in first.content
    assert "simulated" in first.content
    assert "Tell me a joke" in other.content
    assert first.finish_reason == "stop"
    assert first.system_fingerprint == SYSTEM_FINGERPRINT == "helyx-simulated"


async def test_usage_follows_the_rule() -> None:
    result = await SimulatedChatProvider().complete(chat_request(messages=MESSAGES))
    assert result.usage == Usage(simulated_prompt_tokens(MESSAGES), math.ceil(len(result.content) / 4))


async def test_max_tokens_truncates_the_answer_and_finishes_with_length() -> None:
    provider = SimulatedChatProvider()
    full = await provider.complete(chat_request(messages=MESSAGES))
    cut = await provider.complete(chat_request(messages=MESSAGES, max_tokens=5))
    assert cut.finish_reason == "length"
    assert full.content.startswith(cut.content)
    assert len(cut.content) == 20
    assert cut.usage is not None and cut.usage.completion_tokens == 5


async def test_a_stop_sequence_cuts_the_answer_before_it() -> None:
    provider = SimulatedChatProvider()
    full = await provider.complete(chat_request(messages=MESSAGES))
    cut = await provider.complete(chat_request(messages=MESSAGES, stop=["capital"]))
    assert cut.content == full.content[: full.content.index("capital")]
    assert cut.finish_reason == "stop"


async def test_a_stream_comes_in_word_groups_and_matches_the_plain_answer() -> None:
    provider = SimulatedChatProvider()
    result = await provider.complete(chat_request(messages=MESSAGES))
    deltas, error = await collect(provider, chat_request(messages=MESSAGES))
    assert error is None
    assert text_of(deltas) == result.content
    assert len([d for d in deltas if d.content]) >= 5
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage == result.usage
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])


async def test_a_streamed_cut_answer_reports_length() -> None:
    deltas, _ = await collect(SimulatedChatProvider(), chat_request(messages=MESSAGES, max_tokens=3))
    assert len(text_of(deltas)) == 12
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3


async def test_the_delay_is_applied_per_chunk() -> None:
    provider = SimulatedChatProvider(delay=0.02)
    started = time.monotonic()
    deltas, _ = await collect(provider, chat_request(messages=MESSAGES))
    chunks = len([d for d in deltas if d.content])
    assert time.monotonic() - started >= 0.02 * chunks * 0.9
