"""Token estimates that need no tokenizer download, for reserving credits before a call.

`estimate_prompt_tokens` is an UPPER BOUND for text: every byte-pair-encoding token covers at
least one UTF-8 byte, so a text never has more tokens than bytes. On top of the text it allows
4 tokens per message (role and separators; OpenAI uses 3–4) and 3 to prime the reply, and a
bound per image part, by default 1,600: the most OpenAI (high detail, 85 + 170 × 8 tiles = 1,445)
or Anthropic's earlier models (images scaled to ~1.15 megapixels, ~1,600 tokens) charge for one
image. A model that counts more says so in the catalog (`image_tokens`): Claude Opus 4.7 scales an
image to 2,576 px on its long edge and counts ⌈w/28⌉ × ⌈h/28⌉, at most 4,784 (and 3 for the block).
Gemini tiles very large images and may count more; the caller caps the charge at the reservation.

`estimate_completion_tokens` is for a stream that ended without upstream usage (cut off, or an
upstream that ignores include_usage), whose charge is for what was produced, no more (SPEC §4):
ceil(UTF-8 bytes / 4), OpenAI's rule of thumb for English (about four characters a token).
Other scripts, code and numbers have more tokens per byte, so there it errs low, in the client's
favour; it was ceil(bytes / 3) + 1, generous, which charged a client more than was produced.
`estimate_used_prompt_tokens` is the prompt's count in that case: each message's text by the
same rule plus 3 (OpenAI's per-message overhead), and 765 per image part, what OpenAI counts for
a 1024x1024 image at high detail (Anthropic counts ~1,400 for that size, Gemini 258); the charge
stays capped at the hold. A provider that can count offline counts instead
(common.chat_billing.estimated_usage: the simulated provider, by its own rule).

Function tools: their definitions are counted as their JSON text (vendors render them into the
prompt in a form of their own, about as long or shorter: OpenAI's TypeScript-like namespace, Gemini's
declarations), plus TOKENS_FOR_TOOLS for the instructions a vendor adds when tools are given
(Anthropic documents 346 tokens for its current models' tool-use system prompt), also for a
conversation with earlier tool calls and no tools (Anthropic's adapter declares the called
functions then). An earlier turn's tool calls count their id, name and arguments, a tool message
its call's id, as text.

An assistant turn's `reasoning_content` (the thinking sent back with it) counts, as text, for a
model whose vendor reads it (`reasoning=True`: the catalog's `replay_reasoning`); every other
vendor gets the conversation without it.

The simulated provider's counts never exceed `estimate_prompt_tokens` (common.providers.simulated).
"""

from __future__ import annotations

import json
import math
from typing import Any

from common.providers.messages import (
    content_parts,
    part_image_url,
    part_text,
    tool_turn_text,
    tools_json_text,
)

TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3
TOKENS_PER_IMAGE = 1600
TOKENS_PER_IMAGE_USED = 765  # an estimate of what was used, not an upper bound
TOKENS_PER_MESSAGE_USED = 3
TOKENS_FOR_TOOLS = 600  # a vendor's own instructions for tool use (Anthropic: 346), with room to spare
TOKENS_PER_TOOL_CALL = 8  # the framing of one call in an earlier turn


def estimate_prompt_tokens(messages: list[dict[str, Any]], *, image_tokens: int = TOKENS_PER_IMAGE,
                           tools: list[dict[str, Any]] | None = None, tool_choice: object = None,
                           response_format: dict[str, Any] | None = None, reasoning: bool = False) -> int:
    """An upper bound of the prompt tokens the chat upstream will report for `messages` (and the
    function `tools` offered, and a JSON `response_format` with its schema, counted as its JSON
    text), given the most one image part costs there (the catalog's `image_tokens` of the model)."""
    total = TOKENS_PER_REPLY + _bytes(tools_json_text(tools, tool_choice))
    if tools or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
        # a conversation with tool calls and no tools is sent to Anthropic with the called
        # functions declared (common.providers.anthropic_tools), and its tool-use prompt with them
        total += TOKENS_FOR_TOOLS
    total += _bytes(json.dumps(response_format, ensure_ascii=False)) if response_format else 0
    for message in messages:
        total += TOKENS_PER_MESSAGE
        if isinstance(message.get("name"), str):
            total += _bytes(message["name"])
        total += _bytes(tool_turn_text(message)) + TOKENS_PER_TOOL_CALL * len(message.get("tool_calls") or ())
        if reasoning and isinstance(thought := message.get("reasoning_content"), str):
            total += _bytes(thought)
        for part in content_parts(message):
            text = part_text(part)
            if text is not None:
                total += _bytes(text)
            elif part_image_url(part) is not None:
                total += image_tokens
            else:  # a part kind we do not know: its JSON bytes bound whatever the vendor counts
                total += _bytes(json.dumps(part, ensure_ascii=False))
    return total


def estimate_used_prompt_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                                reasoning: bool = False) -> int:
    """The prompt tokens of a call whose upstream reported no usage (a cut stream): the text (the
    tools' definitions and the turns' tool calls included) as `estimate_completion_tokens` counts
    it, TOKENS_PER_MESSAGE_USED per message, TOKENS_PER_IMAGE_USED per image."""
    total = estimate_completion_tokens(tools_json_text(tools))
    for message in messages:
        parts = content_parts(message)
        text = "".join(t for part in parts if (t := part_text(part)) is not None) + tool_turn_text(message)
        if reasoning and isinstance(thought := message.get("reasoning_content"), str):
            text += thought
        images = sum(1 for part in parts if part_text(part) is None and part_image_url(part) is not None)
        total += estimate_completion_tokens(text) + TOKENS_PER_MESSAGE_USED + images * TOKENS_PER_IMAGE_USED
    return total


def estimate_completion_tokens(text: str) -> int:
    """An estimate of the tokens in generated `text` that errs low: ceil(UTF-8 bytes / 4)."""
    return math.ceil(_bytes(text) / 4)


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))
