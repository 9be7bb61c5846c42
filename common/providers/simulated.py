"""An offline, deterministic chat provider for the self-contained mode, demos and tests.

The answer restates the last user message in a sentence or two and says it is simulated; the
same messages always give the same answer. Token counts follow ONE fixed rule:

    simulated_tokens(text) = max(1, ceil(len(text) / 4))
    prompt_tokens     = Σ over messages (simulated_tokens(the message's text parts joined, with its
                        tool calls' names, arguments and ids, or the id of the call it answers) + 3)
                        + simulated_tokens(the tools' JSON text), when tools are offered
    completion_tokens = simulated_tokens(answer + the tool call's name and arguments)

Images are not counted. Since ceil(len / 4) ≤ UTF-8 bytes and 3 + 1 ≤ 4, these counts never
exceed `common.tokens.estimate_prompt_tokens`, so a reservation always covers the charge.
`max_tokens` is honoured by cutting the answer (then the call's arguments) to 4 × max_tokens
characters (finish "length"); `stop` sequences cut the answer too (finish "stop"). With function
tools it may call one instead of answering (common.providers.simulated_tools; finish "tool_calls").
With a JSON response_format the answer is JSON: {"answer": "..."} in JSON mode, a value of the
schema when one is given (its required properties, each of its type: simulated_tools.sample_of).
Cut by max_tokens, it is cut JSON, as a real model's would be.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import AsyncIterator
from typing import Any

from common.providers.base import ChatDelta, ChatRequest, ChatResult, ToolCall, ToolCallDelta, Usage
from common.providers.messages import message_text, role_of, tool_calls_text, tool_turn_text, tools_json_text
from common.providers.simulated_tools import last_question, results_answered, sample_of, string_value, tool_call_for

SYSTEM_FINGERPRINT = "helyx-simulated"
WORDS_PER_CHUNK = 3
ARGUMENT_CHARS_PER_CHUNK = 16
_TOPIC_WORDS = 24
_OPENERS = (
    "Good question.",
    "Here is a short answer.",
    "Thanks for asking.",
    "Let me take that in turn.",
)


def simulated_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def simulated_prompt_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
    return sum(simulated_tokens(message_text(m) + tool_turn_text(m)) + 3 for m in messages) + (
        simulated_tokens(tools_json_text(tools)) if tools else 0)


def simulated_answer(messages: list[dict[str, Any]]) -> str:
    """A plausible, deterministic reply: an opener chosen by a hash of the prompt, then the gist
    of the last user message."""
    digest = hashlib.sha256(repr([(m.get("role"), message_text(m)) for m in messages]).encode())
    opener = _OPENERS[digest.digest()[0] % len(_OPENERS)]
    results = results_answered(messages)
    if results is not None:
        return (f"{opener} {results} This reply comes from Helyx's simulated model, so no upstream provider was "
                "called; a real model would use those results here.")
    question = next((message_text(m, " ") for m in reversed(messages) if role_of(m) == "user"), "")
    words = question.split()
    if not words:
        return (f"{opener} This is Helyx's simulated model: no upstream provider was called, "
                "and there was no question to answer.")
    topic = " ".join(words[:_TOPIC_WORDS]) + (" …" if len(words) > _TOPIC_WORDS else "")
    return (f"{opener} You asked about “{topic}”. This reply comes from Helyx's simulated model, "
            "so no upstream provider was called; a real model would answer in full here.")


def _text_or_json(request: ChatRequest) -> str:
    """The answer, or with a JSON response_format the answer as JSON: {"answer": ...} in JSON mode,
    a value of the schema (simulated_tools.sample_of) for a schema."""
    answer = simulated_answer(request.messages)
    if request.response_format is None:
        return answer
    schema = (request.response_format.get("json_schema") or {}).get("schema")
    value = sample_of(schema, string_value(last_question(request.messages))) if schema else {"answer": answer}
    return json.dumps(value, ensure_ascii=False)


class SimulatedChatProvider:
    json_output = True

    def __init__(self, delay: float = 0.0) -> None:
        self._delay = delay

    def _answer(self, request: ChatRequest) -> tuple[str, str, Usage, ToolCall | None]:
        call = tool_call_for(request)
        content, finish_reason = ("", "tool_calls") if call else (_text_or_json(request), "stop")
        cuts = [i for s in request.stop or [] if s and (i := content.find(s)) >= 0]
        if cuts:
            content = content[: min(cuts)]
        limit = max(1, request.max_tokens)
        if simulated_tokens(content) > limit:
            content, finish_reason = content[: 4 * limit], "length"
        elif call is not None and simulated_tokens(call.name + call.arguments) > limit:  # its arguments cut short
            call, finish_reason = ToolCall(call.id, call.name, call.arguments[: max(0, 4 * limit - len(call.name))]), \
                "length"
        produced = content + (tool_calls_text([call]) if call else "")
        usage = Usage(simulated_prompt_tokens(request.messages, request.tools), simulated_tokens(produced))
        return content, finish_reason, usage, call

    def usage_of(self, messages: list[dict[str, Any]], produced: str,
                 tools: list[dict[str, Any]] | None = None) -> Usage:
        """What a call cut short used, by the rule above: a client that leaves is charged exactly
        for what was produced (common.chat_billing.estimated_usage)."""
        return Usage(simulated_prompt_tokens(messages, tools), simulated_tokens(produced) if produced else 0)

    def refuse_unsendable(self, messages: list[dict[str, Any]], stop: list[str] | None = None,
                          tools: list[dict[str, Any]] | None = None) -> None:
        """Every conversation the request's validation lets through has an answer here."""

    async def complete(self, request: ChatRequest) -> ChatResult:
        content, finish_reason, usage, call = self._answer(request)
        if self._delay:
            await asyncio.sleep(self._delay)
        return ChatResult(content=content, finish_reason=finish_reason, usage=usage,
                          system_fingerprint=SYSTEM_FINGERPRINT, tool_calls=[call] if call else [])

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        content, finish_reason, usage, call = self._answer(request)
        pieces = re.findall(r"\S+\s*|\s+", content)
        for start in range(0, len(pieces), WORDS_PER_CHUNK):
            if self._delay:
                await asyncio.sleep(self._delay)
            yield ChatDelta(content="".join(pieces[start:start + WORDS_PER_CHUNK]))
        if call is not None:
            yield ChatDelta(tool_calls=[ToolCallDelta(0, call.id, call.name)])
            for start in range(0, len(call.arguments), ARGUMENT_CHARS_PER_CHUNK):
                if self._delay:
                    await asyncio.sleep(self._delay)
                piece = call.arguments[start:start + ARGUMENT_CHARS_PER_CHUNK]
                yield ChatDelta(tool_calls=[ToolCallDelta(0, arguments=piece)])
        yield ChatDelta(finish_reason=finish_reason, usage=usage)
