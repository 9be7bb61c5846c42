"""An offline, deterministic chat provider for the self-contained mode, demos and tests.

The answer restates the last user message in a sentence or two and says it is simulated; the
same messages always give the same answer. Token counts follow ONE fixed rule:

    simulated_tokens(text) = max(1, ceil(len(text) / 4))
    prompt_tokens     = Σ over messages (simulated_tokens(the message's text parts joined) + 3)
    completion_tokens = simulated_tokens(answer)

Images are not counted. Since ceil(len / 4) ≤ UTF-8 bytes and 3 + 1 ≤ 4, these counts never
exceed `common.tokens.estimate_prompt_tokens`, so a reservation always covers the charge.
`max_tokens` is honoured by cutting the answer to 4 × max_tokens characters (finish "length");
`stop` sequences cut it too (finish "stop").
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncIterator
from typing import Any

from common.providers.base import ChatDelta, ChatRequest, ChatResult, Usage
from common.providers.messages import message_text, role_of

SYSTEM_FINGERPRINT = "helyx-simulated"
WORDS_PER_CHUNK = 3
_TOPIC_WORDS = 24
_OPENERS = (
    "Good question.",
    "Here is a short answer.",
    "Thanks for asking.",
    "Let me take that in turn.",
)


def simulated_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def simulated_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(simulated_tokens(message_text(m)) + 3 for m in messages)


def simulated_answer(messages: list[dict[str, Any]]) -> str:
    """A plausible, deterministic reply: an opener chosen by a hash of the prompt, then the gist
    of the last user message."""
    digest = hashlib.sha256(repr([(m.get("role"), message_text(m)) for m in messages]).encode())
    opener = _OPENERS[digest.digest()[0] % len(_OPENERS)]
    question = next((message_text(m, " ") for m in reversed(messages) if role_of(m) == "user"), "")
    words = question.split()
    if not words:
        return (f"{opener} This is Helyx's simulated model: no upstream provider was called, "
                "and there was no question to answer.")
    topic = " ".join(words[:_TOPIC_WORDS]) + (" …" if len(words) > _TOPIC_WORDS else "")
    return (f"{opener} You asked about “{topic}”. This reply comes from Helyx's simulated model, "
            "so no upstream provider was called; a real model would answer in full here.")


class SimulatedChatProvider:
    def __init__(self, delay: float = 0.0) -> None:
        self._delay = delay

    def _answer(self, request: ChatRequest) -> tuple[str, str, Usage]:
        content, finish_reason = simulated_answer(request.messages), "stop"
        cuts = [i for s in request.stop or [] if s and (i := content.find(s)) >= 0]
        if cuts:
            content = content[: min(cuts)]
        limit = max(1, request.max_tokens)
        if simulated_tokens(content) > limit:
            content, finish_reason = content[: 4 * limit], "length"
        usage = Usage(simulated_prompt_tokens(request.messages), simulated_tokens(content))
        return content, finish_reason, usage

    def usage_of(self, messages: list[dict[str, Any]], produced: str) -> Usage:
        """What a call cut short used, by the rule above: a client that leaves is charged exactly
        for what was produced (common.chat_billing.estimated_usage)."""
        return Usage(simulated_prompt_tokens(messages), simulated_tokens(produced) if produced else 0)

    def refuse_unsendable(self, messages: list[dict[str, Any]], stop: list[str] | None = None) -> None:
        """Every conversation the request's validation lets through has an answer here."""

    async def complete(self, request: ChatRequest) -> ChatResult:
        content, finish_reason, usage = self._answer(request)
        if self._delay:
            await asyncio.sleep(self._delay)
        return ChatResult(content=content, finish_reason=finish_reason, usage=usage,
                          system_fingerprint=SYSTEM_FINGERPRINT)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        content, finish_reason, usage = self._answer(request)
        pieces = re.findall(r"\S+\s*|\s+", content)
        for start in range(0, len(pieces), WORDS_PER_CHUNK):
            if self._delay:
                await asyncio.sleep(self._delay)
            yield ChatDelta(content="".join(pieces[start:start + WORDS_PER_CHUNK]))
        yield ChatDelta(finish_reason=finish_reason, usage=usage)
