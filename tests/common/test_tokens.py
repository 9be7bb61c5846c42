"""Token estimates: an upper bound for prompts, generous for completions, above the simulator."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from common.providers.simulated import simulated_prompt_tokens
from common.tokens import estimate_completion_tokens, estimate_prompt_tokens


def test_a_prompt_costs_its_utf8_bytes_plus_four_per_message_plus_three() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo"}]
    assert estimate_prompt_tokens(messages) == 9 + 6 + 4 * 2 + 3


def test_text_parts_count_their_bytes_and_each_image_1600() -> None:
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}},
        {"type": "image_url", "image_url": {"url": "https://img.test/x.png"}},
    ]}]
    assert estimate_prompt_tokens(messages) == 13 + 2 * 1600 + 4 + 3


def test_empty_and_missing_content_still_count_the_message_overhead() -> None:
    assert estimate_prompt_tokens([]) == 3
    assert estimate_prompt_tokens([{"role": "assistant", "content": None}, {"role": "user", "content": ""}]) == 11


def test_a_message_name_counts_too() -> None:
    assert estimate_prompt_tokens([{"role": "user", "name": "ann", "content": "hi"}]) == 3 + 2 + 4 + 3


def test_completion_estimate_is_a_third_of_the_bytes_rounded_up_plus_one() -> None:
    assert estimate_completion_tokens("") == 1
    assert estimate_completion_tokens("abc") == 2
    assert estimate_completion_tokens("abcd") == 3
    assert estimate_completion_tokens("日本") == 3  # 6 bytes


def test_the_completion_estimate_is_generous_for_english_prose() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 20
    about_four_bytes_per_token = math.ceil(len(text) / 4)
    assert estimate_completion_tokens(text) > about_four_bytes_per_token


_part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.text()),
    st.just({"type": "image_url", "image_url": {"url": "https://img.test/a.png"}}),
)
_content = st.one_of(st.none(), st.text(), st.lists(_part, max_size=8))
_message = st.builds(lambda role, content: {"role": role, "content": content},
                     st.sampled_from(["system", "user", "assistant"]), _content)


@given(st.lists(_message, max_size=8))
@example([{"role": "user", "content": [{"type": "text", "text": ""}] * 40}])
@example([{"role": "user", "content": [{"type": "text", "text": "é"}] * 40}])
def test_the_simulated_provider_never_counts_more_than_the_estimate(messages: list[dict[str, Any]]) -> None:
    assert simulated_prompt_tokens(messages) <= estimate_prompt_tokens(messages)
