"""Token estimates: an upper bound for prompts, generous for completions, above the simulator."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.providers.simulated import simulated_prompt_tokens
from common.tokens import (
    TOKENS_FOR_TOOLS,
    TOKENS_PER_TOOL_CALL,
    estimate_completion_tokens,
    estimate_prompt_tokens,
    estimate_used_prompt_tokens,
)


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
@settings(deadline=None)  # a busy machine's pause in one example is no flaw of the bound
@example([{"role": "user", "content": [{"type": "text", "text": ""}] * 40}])
@example([{"role": "user", "content": [{"type": "text", "text": "é"}] * 40}])
def test_the_simulated_provider_never_counts_more_than_the_estimate(messages: list[dict[str, Any]]) -> None:
    assert simulated_prompt_tokens(messages) <= estimate_prompt_tokens(messages)


def test_function_tools_and_a_conversations_tool_calls_count_in_the_bound_and_in_the_used_estimate() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    tools_bytes = len(json.dumps(tools))
    question = [{"role": "user", "content": "hi"}]
    assert estimate_prompt_tokens(question, tools=tools) == estimate_prompt_tokens(question) + tools_bytes + \
        TOKENS_FOR_TOOLS
    named = {"type": "function", "function": {"name": "lookup"}}
    assert estimate_prompt_tokens(question, tools=tools, tool_choice=named) == estimate_prompt_tokens(
        question, tools=tools) + len(json.dumps(named))
    assert estimate_prompt_tokens(question, tools=[]) == estimate_prompt_tokens(question)
    calls = [*question, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    # the call's id, name and arguments and the result's call id, with a call's framing; and the tool-use
    # allowance without tools too (Anthropic's adapter declares the called functions: a review found the
    # hold short of Anthropic's charge there)
    added = len("c1lookup" + '{"q": 1}') + TOKENS_PER_TOOL_CALL + len("c1" + "ok") + 2 * 4
    assert estimate_prompt_tokens(calls) == estimate_prompt_tokens(question) + added + TOKENS_FOR_TOOLS
    assert estimate_prompt_tokens(calls, tools=tools) == estimate_prompt_tokens(calls) + tools_bytes
    assert estimate_used_prompt_tokens(question, tools) == estimate_used_prompt_tokens(question) + \
        estimate_completion_tokens(json.dumps(tools))
    assert estimate_used_prompt_tokens(calls) > estimate_used_prompt_tokens(question) + 2 * 3


def test_an_earlier_turns_thinking_counts_only_for_a_vendor_that_reads_it() -> None:
    """`reasoning_content` goes back to a vendor that asks for it (`reasoning=True`: the bound and
    the estimate of what was used count it) and to no other (neither does)."""
    turn = {"role": "assistant", "content": "Sunny."}
    thought = "Thinking about the weather — 天気"
    with_thought = [{"role": "user", "content": "hi"}, {**turn, "reasoning_content": thought}]
    without = [{"role": "user", "content": "hi"}, turn]
    assert estimate_prompt_tokens(with_thought, reasoning=True) == estimate_prompt_tokens(without) + len(
        thought.encode())
    assert estimate_prompt_tokens(with_thought) == estimate_prompt_tokens(without)
    assert estimate_used_prompt_tokens(with_thought, reasoning=True) == estimate_used_prompt_tokens(
        [{"role": "user", "content": "hi"}, {**turn, "content": "Sunny." + thought}])
    assert estimate_used_prompt_tokens(with_thought) == estimate_used_prompt_tokens(without)
