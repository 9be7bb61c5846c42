"""Adapter for OpenAI's Chat Completions wire format, spoken by OpenAI and most other vendors.

`base_url` ends with the API version, as in OpenAI's SDK ("https://api.openai.com/v1"); the
adapter POSTs to `{base_url}/chat/completions`. A stream asks for `include_usage`, so its last
chunk (with empty `choices`) carries the usage (Moonshot's is in the finish chunk's choice, Groq's
older one in `x_groq`: both read too); an upstream that ignores the option yields a stream
without usage and the caller estimates it. Function tools go as they came (`tools`, `tool_choice`,
`parallel_tool_calls` when the caller set it; the conversation's tool calls and results are
OpenAI's own form), and the calls come back as they are, streamed pieces by their `index` (a
vendor that leaves it out gets one per new call id). A reasoning model's thinking comes back as
`reasoning_content` (whatever the vendor's field); an earlier turn's goes back to a vendor whose
thinking models need it in a tool loop (`replay_reasoning`: Moonshot, Zhipu), and to no other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from common.errors import InvalidRequest, UpstreamError
from common.providers.base import (
    MAX_TOKEN_COUNT,
    SAMPLING_FIELDS,
    ChatDelta,
    ChatRequest,
    ChatResult,
    ToolCall,
    ToolCallDelta,
    Usage,
    reported_usage,
    token_count,
)
from common.providers.error_blocks import malformed_answers, upstream_errors
from common.providers.http import (
    UpstreamClient,
    failure_in_body,
    iter_sse,
    raise_for_status,
)
from common.providers.messages import alternating
from common.providers.minimax_status import base_resp_error
from common.providers.vendor_bodies import json_or_none, parse_json, vendor_message
from common.throttled_log import ThrottledWarnings

PROVIDER = "openai-compatible"
_OPTIONAL = (*SAMPLING_FIELDS, "user")
# Fields of OpenAI's request a stricter vendor refuses (Mistral answers 422 "extra inputs are not
# permitted" to each): the catalog's `unsent_fields` of a provider leaves them out. `name` is a
# message's participant name; without `stream_options` a stream's usage is the vendor's own
# (Mistral sends it in its last chunk) or, absent, estimated.
UNSENDABLE = ("user", "stream_options", "name")
REASONING = "reasoning_content"  # an assistant turn's thinking, as the caller sends it back


class OpenAICompatProvider:
    json_output = True  # response_format goes as it came (a vendor without it answers its own 400)

    def __init__(self, client: UpstreamClient, base_url: str, api_key: str | None,
                 unsent_fields: list[str] | tuple[str, ...] = (), alternate_turns: bool = False,
                 limit_field: str = "max_tokens", extra_body: Mapping[str, Any] | None = None,
                 replay_reasoning: bool = False) -> None:
        self._client = client
        self._url = httpx.URL(base_url.rstrip("/") + "/chat/completions")  # parsed once, not per request
        self._api_key = api_key
        unsent = frozenset(unsent_fields)
        self._optional = tuple(name for name in _OPTIONAL if name not in unsent)
        self._ask_usage = "stream_options" not in unsent
        self._drop_names = "name" in unsent
        self._alternate = alternate_turns  # Perplexity: one system message first, then strict alternation
        # OpenAI's reasoning models (o-series, gpt-5) refuse `max_tokens`, and Qwen's compatible mode
        # retired it: the limit goes out as `max_completion_tokens` for those providers
        self._limit_field = limit_field
        # A vendor's own request fields, sent with every call (MiniMax's `reasoning_split`); the
        # catalog refuses any that Helyx itself sets (common.catalog_options.SENT_FIELDS)
        self._extra_body = dict(extra_body or {})
        # Moonshot's thinking models refuse a replayed tool-call turn without its `reasoning_content`
        # (a 400), Zhipu's ask for it; others never see the field (OpenAI's own may refuse it)
        self.replays_reasoning = replay_reasoning  # read by the estimate of a cut stream's prompt

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        messages = request.messages
        dropped = ({"name"} if self._drop_names else set()) | (set() if self.replays_reasoning else {REASONING})
        if any(dropped & m.keys() for m in messages):
            messages = [{k: v for k, v in m.items() if k not in dropped} for m in messages]
        if self._alternate:
            messages = alternating(messages)
        body: dict[str, Any] = {**self._extra_body, "model": request.model, "messages": messages,
                                self._limit_field: request.max_tokens}
        for name in self._optional:
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if request.response_format is not None:
            body["response_format"] = request.response_format
        if request.tools:
            body["tools"] = request.tools
            for name in ("tool_choice", "parallel_tool_calls"):
                if (value := getattr(request, name)) is not None:
                    body[name] = value
        if stream:
            body["stream"] = True
            if self._ask_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    def refuse_unsendable(self, messages: list[dict[str, Any]], stop: list[str] | None = None,
                          tools: list[dict[str, Any]] | None = None) -> None:
        """The request's validation is OpenAI's own: what it lets through is sent as it is. But a
        vendor whose turns must alternate (Perplexity) has no function tools, and its joined turns
        would lose a conversation's tool calls: refused before anything is held."""
        if self._alternate and tools:
            raise InvalidRequest("This model's provider takes no function tools; leave tools out.", param="tools",
                                 code="unsupported_parameter")
        if self._alternate and any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
            raise InvalidRequest("This model's provider takes no tool calls or tool results in the conversation.",
                                 param="messages", code="unsupported_parameter")

    async def complete(self, request: ChatRequest) -> ChatResult:
        with upstream_errors(PROVIDER):
            response = await self._client.post_json(self._url, self._body(request, False), self._headers())
            await raise_for_status(response, PROVIDER, self._api_key)
            data = parse_json(response.content, PROVIDER)
        _raise_if_error(data, self._api_key)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices:
            raise UpstreamError(f"The upstream provider ({PROVIDER}) answered without choices",
                                code="upstream_bad_response")
        with malformed_answers(PROVIDER):
            choice = choices[0]
            message = choice.get("message") or {}
            fingerprint = data.get("system_fingerprint")
            return ChatResult(
                content=_content(message.get("content")),
                finish_reason=_finish_reason(choice.get("finish_reason")) or "stop",
                usage=_usage(data.get("usage")),
                system_fingerprint=fingerprint if isinstance(fingerprint, str) else None,
                refusal=_text(message.get("refusal")) or None,
                tool_calls=[_tool_call(call) for call in message.get("tool_calls") or ()],
                reasoning=_reasoning(message) if _has_reasoning(message) else None,
            )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        finished = False
        with upstream_errors(PROVIDER):
            async with self._client.stream_json(self._url, self._body(request, True),
                                                self._headers()) as response:
                await raise_for_status(response, PROVIDER, self._api_key)
                stray: list[str] = []  # what is not an event: a failure told as one JSON body (MiniMax)
                events = 0
                indexes = _CallIndexes()
                async for event in iter_sse(response, stray):
                    events += 1
                    if event.data.strip() == "[DONE]":
                        return
                    chunk = parse_json(event.data, PROVIDER)
                    with malformed_answers(PROVIDER):
                        delta = _chunk_delta(chunk, self._api_key, indexes)
                    if delta is not None:
                        finished = finished or delta.finish_reason is not None
                        yield delta
                if not events and isinstance(body := json_or_none("\n".join(stray)), dict):
                    _raise_if_error(body, self._api_key)
                    raise UpstreamError(f"The upstream provider ({PROVIDER}) answered a stream request with "
                                        "one JSON body, no events", code="upstream_bad_response")
        if not finished:
            raise UpstreamError(f"The upstream provider ({PROVIDER}) ended the stream early",
                                retryable=True)


def _chunk_delta(chunk: Any, api_key: str | None, indexes: _CallIndexes) -> ChatDelta | None:
    """The delta one stream chunk carries, or None for a chunk with nothing for us (role-only)."""
    _raise_if_error(chunk, api_key)
    if not isinstance(chunk, dict):
        return None
    content, refusal, thinking, finish_reason, usage_data = "", "", "", None, chunk.get("usage")
    tool_calls: list[ToolCallDelta] = []
    choices = chunk.get("choices") or []
    if choices:
        choice = choices[0]
        delta = choice.get("delta") or {}
        content, refusal = _content(delta.get("content")), _text(delta.get("refusal"))
        tool_calls = [indexes.piece(piece) for piece in delta.get("tool_calls") or ()]
        thinking = _reasoning(delta)
        finish_reason = _finish_reason(choice.get("finish_reason"))
        # Moonshot puts the stream's usage in the finish chunk's choice; Groq used to put it in x_groq
        groq = chunk.get("x_groq")
        usage_data = usage_data or choice.get("usage") or (groq.get("usage") if isinstance(groq, dict) else None)
    usage = _usage(usage_data)
    if not content and not refusal and not thinking and not tool_calls and finish_reason is None and usage is None:
        return None
    fingerprint = chunk.get("system_fingerprint")
    return ChatDelta(content=content, finish_reason=finish_reason, usage=usage, refusal=refusal,
                     system_fingerprint=fingerprint if isinstance(fingerprint, str) else None, thinking=thinking,
                     tool_calls=tool_calls)


def _tool_call(call: Any) -> ToolCall:
    """A tool call of a plain answer. Arguments sent as an object, not JSON text (some OpenAI-
    compatible servers do), are written as JSON text; anything else malformed raises TypeError."""
    function = call["function"]
    return ToolCall(_string(call["id"]), _string(function["name"]), _arguments(function.get("arguments")))


class _CallIndexes:
    """Which call each streamed piece belongs to: its `index`, or for a vendor that sends none, a
    new call for each new id (a piece without either continues the last call)."""

    def __init__(self) -> None:
        self._by_id: dict[str, int] = {}
        self._last = -1

    def piece(self, piece: Any) -> ToolCallDelta:
        function = piece.get("function") or {}
        call_id, name = piece.get("id"), function.get("name")
        index = piece.get("index")
        if index is None:
            known = isinstance(call_id, str)
            index = self._by_id.setdefault(call_id, len(self._by_id)) if known else max(self._last, 0)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise TypeError(f"a tool call's index of type {type(index).__name__}")
        self._last = index
        return ToolCallDelta(index, _string(call_id) if call_id is not None else None,
                             _string(name) if name is not None else None, _arguments(function.get("arguments")))


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a tool call's field of type {type(value).__name__}")
    return value


def _arguments(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _reasoning(message: dict[str, Any]) -> str:
    """A message's or delta's thinking. DeepSeek, Moonshot, Zhipu and Qwen send a reasoning model's
    thinking as `reasoning_content`, OpenRouter and vLLM as `reasoning`, MiniMax (with
    `reasoning_split`) as `reasoning_details`: produced (and billed) before the first answer token."""
    return (_text(message.get(REASONING)) or _text(message.get("reasoning"))
            or _details_text(message.get("reasoning_details")))


def _has_reasoning(message: dict[str, Any]) -> bool:
    """Whether a message carries a thinking field at all (an empty one too: DeepSeek wants a
    tool-call turn's `reasoning_content` back even when empty)."""
    return any(message.get(name) is not None for name in (REASONING, "reasoning", "reasoning_details"))


def _details_text(value: Any) -> str:
    """The text of MiniMax's `reasoning_details` ([{"type": "reasoning.text", "text": ...}])."""
    if not isinstance(value, list):
        return ""
    return "".join(_text(part.get("text")) for part in value if isinstance(part, dict))


def _content(value: Any) -> str:
    """A message's or delta's content: text, none, or (Mistral's reasoning models) a list of parts,
    whose text parts are the answer (their thinking parts are not). Anything else is malformed."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        return "".join(part["text"] for part in value if isinstance(part, dict) and part.get("type") == "text"
                       and isinstance(part.get("text"), str))
    raise TypeError(f"content of type {type(value).__name__}")


# OpenAI's own finish reasons pass through; a vendor's other ones are put in OpenAI's terms (an SDK
# with strict types refuses any other value). Zhipu's "sensitive" is its safety review's cut,
# Zhipu's "model_context_window_exceeded" and Mistral's "model_length" a length limit; Zhipu's
# "network_error", DeepSeek's "insufficient_system_resource" (an inference the vendor interrupted)
# and "error" say the inference failed, which is a failed call (it costs nothing), not an answer.
# Any other is "stop", and logged: a vendor's new value gets noticed.
OPENAI_FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls", "function_call"})
_VENDOR_FINISH_REASONS = {"sensitive": "content_filter", "model_context_window_exceeded": "length",
                          "model_length": "length"}
_FAILED_FINISH_REASONS = frozenset({"network_error", "insufficient_system_resource", "error"})
_warnings = ThrottledWarnings(logging.getLogger("helyx.api"))


def _finish_reason(value: Any) -> str | None:
    if value is None or value in OPENAI_FINISH_REASONS:
        return value
    if not isinstance(value, str):
        raise TypeError(f"finish_reason of type {type(value).__name__}")
    if value in _FAILED_FINISH_REASONS:
        raise UpstreamError(f"The upstream provider ({PROVIDER}) failed during the answer (finish_reason {value!r})",
                            retryable=True)
    if value not in _VENDOR_FINISH_REASONS:
        _warnings.warning("unknown finish_reason", "upstream %s ended an answer with an unknown finish_reason %r, "
                          "passed on as 'stop'", PROVIDER, value[:100])
    return _VENDOR_FINISH_REASONS.get(value, "stop")


def _raise_if_error(data: Any, api_key: str | None) -> None:
    """OpenAI-compatible upstreams report a failure inside a 200 (often mid-stream) as
    {"error": {...}}; MiniMax as a failing `base_resp` (common.providers.minimax_status)."""
    if (failure := base_resp_error(data, PROVIDER, api_key)) is not None:
        raise failure
    if isinstance(data, dict) and data.get("error"):
        raise failure_in_body(PROVIDER, vendor_message(json.dumps(data).encode(), api_key), retryable=True)


def _usage(data: Any) -> Usage | None:
    """In OpenAI's terms: `completion_tokens` includes the reasoning tokens. xAI counts them apart
    (prompt + completion + reasoning = total), and bills them as output: they are added, or its
    reasoning models' thinking would be served for free. A vendor that counts them inside (OpenAI,
    DeepSeek: total = prompt + completion) is taken as it is."""
    if not isinstance(data, dict):
        return None
    prompt, completion = token_count(data.get("prompt_tokens")), token_count(data.get("completion_tokens"))
    details = data.get("completion_tokens_details")
    stated = token_count(details.get("reasoning_tokens")) if isinstance(details, dict) else None
    reasoning = stated or 0
    total = token_count(data.get("total_tokens"))
    if prompt is not None and completion is not None and reasoning and total == prompt + completion + reasoning:
        completion = min(completion + reasoning, MAX_TOKEN_COUNT)
    prompt_details = data.get("prompt_tokens_details")
    cached = token_count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else None
    return reported_usage(prompt, completion, cached=cached, reasoning=stated)
