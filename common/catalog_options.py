"""The options a catalog provider's adapter takes beyond kind, base_url and api_key_env (keyword
arguments of its class), by provider kind and the kind of model it serves, each with the check its
value must pass and what that check wants (common.catalog reports a failed check in those words)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from common.providers.base import SAMPLING_FIELDS
from common.providers.openai_compat import UNSENDABLE
from common.settings import DAY_SECONDS

PROVIDER_KINDS = ("openai", "anthropic", "gemini", "veo", "simulated")
PROVIDER_FIELDS = ("kind", "base_url", "api_key_env")  # every provider's; the options below come on top


def _seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= DAY_SECONDS


def _tries(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100


def _durations(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 3600 for d in value)


def _unsendable(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v in UNSENDABLE for v in value)


LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")  # how an `openai` provider is sent the output limit
# What Helyx itself may put in an `openai` provider's request body: `extra_body` may not set these
# (a vendor field with a fixed value for every call must not override the caller's or the hold's)
# `n` too (choices beyond the one the hold covers), and what changes how the answer is read
# (tools, response formats, log probabilities, audio): the request's own checks refuse those
SENT_FIELDS = ("model", "messages", "stream", "stream_options", *LIMIT_FIELDS, *SAMPLING_FIELDS, "user", "n",
               "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "response_format",
               "logprobs", "top_logprobs", "modalities", "audio")


def _extra_body(value: Any) -> bool:
    """A table of JSON values (TOML's dates and times are not, nor infinities and NaNs) naming
    none of SENT_FIELDS."""
    def plain(item: Any) -> bool:
        if isinstance(item, dict):
            return all(isinstance(k, str) and plain(v) for k, v in item.items())
        if isinstance(item, list):
            return all(plain(v) for v in item)
        if isinstance(item, float):
            return math.isfinite(item)
        return item is None or isinstance(item, str | int | bool)
    return isinstance(value, dict) and not value.keys() & set(SENT_FIELDS) and plain(value)


_EXTRA_BODY_WANTED = "a table of JSON values naming none of " + ", ".join(SENT_FIELDS)
_SECONDS = (_seconds, f"a number of seconds above 0 and at most {DAY_SECONDS:,}")
ADAPTER_OPTIONS: dict[tuple[str, str], dict[str, tuple[Callable[[Any], bool], str]]] = {
    ("veo", "video"): {"poll_interval": _SECONDS, "max_wait": _SECONDS, "expected_seconds": _SECONDS,
                       "durations": (_durations, "a non-empty list of whole seconds (1 to 3,600)"),
                       "poll_retries": (_tries, "a whole number from 0 to 100")},
    ("gemini", "image"): {"timeout": _SECONDS},  # common.providers.gemini_image
    ("openai", "chat"): {"unsent_fields": (_unsendable, f"a list among {', '.join(UNSENDABLE)}"),
                         "alternate_turns": (lambda value: isinstance(value, bool), "true or false"),
                         "limit_field": (lambda value: value in LIMIT_FIELDS, " or ".join(map(repr, LIMIT_FIELDS))),
                         "extra_body": (_extra_body, _EXTRA_BODY_WANTED),
                         "replay_reasoning": (lambda value: isinstance(value, bool), "true or false")},
}
PROVIDER_OPTIONS: dict[str, tuple[str, ...]] = {
    kind: tuple(name for (k, _), options in ADAPTER_OPTIONS.items() if k == kind for name in options)
    for kind in PROVIDER_KINDS}
