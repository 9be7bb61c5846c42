"""Each adapter reads a vendor's usage through base.token_count: a count that is not one makes
the usage None (the gateway then estimates it); a count a vendor leaves out when zero is zero."""

from __future__ import annotations

from typing import Any

import pytest

from common.providers import anthropic, gemini, openai_compat
from common.providers.base import MAX_TOKEN_COUNT, Usage, token_count


@pytest.mark.parametrize(("value", "count"), [
    (0, 0), (12, 12), (12.0, 12), (2**40, MAX_TOKEN_COUNT),
    (-1, None), (12.5, None), ("12", None), (True, None), (False, None), ([12], None), (float("nan"), None),
    (float("inf"), None),
])
def test_a_token_count_is_a_whole_non_negative_number(value: Any, count: int | None) -> None:
    assert token_count(value) == count


def test_a_missing_count_is_what_the_caller_says_it_means() -> None:
    assert token_count(None) is None and token_count(None, absent=0) == 0


@pytest.mark.parametrize(("data", "usage"), [
    ({"prompt_tokens": 12, "completion_tokens": 9}, Usage(12, 9)),
    ({"prompt_tokens": -12, "completion_tokens": 9}, None),
    ({"prompt_tokens": 12}, None),
    ({"completion_tokens": 9}, None),
    ("12", None),
])
def test_openai_usage(data: Any, usage: Usage | None) -> None:
    assert openai_compat._usage(data) == usage


@pytest.mark.parametrize(("data", "usage"), [
    ({"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 9}, Usage(15, 9, cached_tokens=5)),
    ({"input_tokens": 10, "cache_read_input_tokens": -5, "output_tokens": 9}, None),
    ({"input_tokens": 10, "output_tokens": "9"}, None),
    ({"output_tokens": 9}, None),
])
def test_anthropic_usage(data: Any, usage: Usage | None) -> None:
    assert anthropic._usage(data) == usage


@pytest.mark.parametrize(("data", "usage"), [
    ({"promptTokenCount": 10, "candidatesTokenCount": 9, "thoughtsTokenCount": 4}, Usage(10, 13, reasoning_tokens=4)),
    ({"promptTokenCount": 10, "candidatesTokenCount": 9, "cachedContentTokenCount": 6}, Usage(10, 9, cached_tokens=6)),
    ({"promptTokenCount": 10}, Usage(10, 0)),  # Gemini leaves out a zero count
    ({"promptTokenCount": 10, "candidatesTokenCount": -9}, None),
    ({"candidatesTokenCount": 9}, None),
])
def test_gemini_usage(data: Any, usage: Usage | None) -> None:
    assert gemini._usage(data) == usage
