"""Token estimates: an upper bound for prompts, generous for completions, above the simulator."""

from __future__ import annotations

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


def test_completion_estimate_is_a_quarter_of_the_bytes_rounded_up() -> None:
    assert estimate_completion_tokens("") == 0
    assert estimate_completion_tokens("abc") == 1
    assert estimate_completion_tokens("abcde") == 2
    assert estimate_completion_tokens("日本") == 2  # 6 bytes


def test_a_cut_simulated_stream_is_counted_by_the_simulated_providers_own_rule() -> None:
    """Its rule is known, so a client that leaves the demo's stream pays exactly for what it got."""
    from common.chat_billing import estimated_usage
    from common.providers.simulated import SimulatedChatProvider, simulated_prompt_tokens, simulated_tokens

    messages = [{"role": "user", "content": "héllo wörld, 日本語"}]
    produced = "Here is a short answer. You asked about “héllo"
    usage = estimated_usage(messages, produced, SimulatedChatProvider())
    assert (usage.prompt_tokens, usage.completion_tokens) == (simulated_prompt_tokens(messages),
                                                             simulated_tokens(produced))
    assert estimated_usage(messages, produced).completion_tokens > usage.completion_tokens  # bytes > characters


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
