"""Adapter for Anthropic's Messages API.

- `base_url` is the host root, as in Anthropic's SDK ("https://api.anthropic.com"); the adapter
  POSTs to `{base_url}/v1/messages`. A base_url that already ends in "/v1" is accepted too.
- System messages, wherever they are, become the top-level `system` (joined by blank lines);
  consecutive messages of one role are merged, as Anthropic requires user/assistant alternation.
- Temperature: OpenAI's range is 0–2, Anthropic's 0–1. We clamp to 1 rather than halve: the
  values callers actually send (0, 0.2, 0.7, 1) then mean the same on both sides.
- Current Claude models refuse `temperature` and `top_p` together. `top_p` 1 (or unset) is a
  no-op and is not sent; a caller who narrows top_p below 1 asked for nucleus sampling, so then
  top_p is sent instead of temperature.
- Function tools: definitions, tool_choice and parallel_tool_calls become `tools` and
  `tool_choice`; an assistant's tool calls become tool_use blocks after its text, tool messages
  tool_result blocks first in their user turn (a call id reused in a later turn sent as another
  id, as Anthropic takes each once); tool_use blocks come back as tool calls, streamed as OpenAI
  streams them. The details are common.providers.anthropic_tools'.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from common.errors import InvalidRequest, UpstreamError
from common.providers.anthropic_tools import (
    StreamedToolCalls,
    answer_tool_calls,
    block_rank,
    refuse_unsendable_tools,
    tool_fields,
    tool_result_block,
    tool_use_blocks,
    with_unique_call_ids,
)
from common.providers.base import (
    MAX_TOKEN_COUNT,
    ChatDelta,
    ChatRequest,
    ChatResult,
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
from common.providers.image_types import ANTHROPIC_IMAGE_TYPES
from common.providers.messages import (
    content_parts,
    parse_data_url,
    part_image_url,
    part_text,
    refuse_empty_conversation,
    refuse_image_types,
    role_of,
    system_and_turns,
)
from common.providers.vendor_bodies import parse_json, vendor_message

PROVIDER = "anthropic"
API_VERSION = "2023-06-01"
FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}
# Error types a new attempt may mend (https://docs.anthropic.com/en/api/errors).
_RETRYABLE_ERRORS = {"api_error", "overloaded_error", "rate_limit_error", "timeout_error"}


class AnthropicProvider:
    json_output = False  # the Messages API has no JSON mode (its structured outputs need a beta header)

    def __init__(self, client: UpstreamClient, base_url: str, api_key: str | None) -> None:
        self._client = client
        root = base_url.rstrip("/")
        self._url = httpx.URL(root + ("/messages" if root.endswith("/v1") else "/v1/messages"))  # parsed once
        self._api_key = api_key

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    def refuse_unsendable(self, messages: list[dict[str, Any]], stop: list[str] | None = None,
                          tools: list[dict[str, Any]] | None = None) -> None:
        refuse_empty_conversation(messages, "Anthropic")
        refuse_image_types(messages, ANTHROPIC_IMAGE_TYPES, "Anthropic")
        refuse_unsendable_tools(messages, tools)
        if stop and any(not sequence.strip() for sequence in stop):  # Anthropic's 400 otherwise, after a hold
            raise InvalidRequest("Anthropic's models take no stop sequence of whitespace only (such as \"\\n\").",
                                 param="stop")

    async def complete(self, request: ChatRequest) -> ChatResult:
        with upstream_errors(PROVIDER):
            response = await self._client.post_json(self._url, build_body(request, stream=False),
                                                    self._headers())
            await raise_for_status(response, PROVIDER, self._api_key)
            data = parse_json(response.content, PROVIDER)
        if not isinstance(data, dict):
            raise UpstreamError(f"The upstream provider ({PROVIDER}) sent an unexpected body",
                                code="upstream_bad_response")
        if data.get("type") == "error":
            raise self._event_error(data)
        with malformed_answers(PROVIDER):
            content = data.get("content") or []
            text = "".join(block.get("text", "") for block in content if block.get("type") == "text")
            return ChatResult(content=text, finish_reason=_finish(data.get("stop_reason")),
                              usage=_usage(data.get("usage")), tool_calls=answer_tool_calls(content))

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        inputs: dict[str, Any] = {}  # the three prompt counts, as last reported
        completion_tokens: int | None = 0
        finish_reason: str | None = None
        tool_calls = StreamedToolCalls()
        with upstream_errors(PROVIDER), malformed_answers(PROVIDER):
            async with self._client.stream_json(self._url, build_body(request, stream=True),
                                                self._headers()) as response:
                await raise_for_status(response, PROVIDER, self._api_key)
                async for event in iter_sse(response):
                    data = parse_json(event.data, PROVIDER)
                    if not isinstance(data, dict):
                        continue
                    kind = data.get("type", event.event)
                    if kind == "error":
                        raise self._event_error(data)
                    if kind == "message_start":
                        usage = (data.get("message") or {}).get("usage") or {}
                        inputs = {key: usage.get(key) for key in _INPUT_COUNTS}
                        completion_tokens = token_count(usage.get("output_tokens"), absent=0)
                    elif kind == "message_delta":
                        finish_reason = _finish((data.get("delta") or {}).get("stop_reason"))
                        usage = data.get("usage") or {}
                        # message_delta counts are cumulative, each may be left out (then it is
                        # unchanged): the latest of each wins.
                        completion_tokens = token_count(usage.get("output_tokens"), absent=completion_tokens)
                        inputs.update({key: usage[key] for key in _INPUT_COUNTS if usage.get(key) is not None})
                    elif kind == "message_stop":
                        break
                    elif text := _text_delta(kind, data):
                        yield ChatDelta(content=text, prompt_tokens=_prompt_tokens(inputs))
                    elif (call := tool_calls.read(kind, data)) is not None:
                        yield ChatDelta(tool_calls=[call], prompt_tokens=_prompt_tokens(inputs))
        if finish_reason is None:
            raise UpstreamError(f"The upstream provider ({PROVIDER}) ended the stream early",
                                retryable=True)
        yield ChatDelta(finish_reason=finish_reason, usage=reported_usage(
            _prompt_tokens(inputs), completion_tokens, cached=token_count(inputs.get("cache_read_input_tokens"))))

    def _event_error(self, data: dict[str, Any]) -> UpstreamError:
        """An `error` event (mid-stream) or error body: {"type": "error", "error": {type, message}}."""
        error = data.get("error") or {}
        message = vendor_message(str(error.get("message") or "").encode(), self._api_key)
        return failure_in_body(PROVIDER, message, retryable=error.get("type") in _RETRYABLE_ERRORS)


def build_body(request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The Messages API body for an OpenAI-shaped request."""
    system, turns = system_and_turns(with_unique_call_ids(request.messages), role_of, _blocks)
    for _, blocks in turns:
        blocks.sort(key=block_rank)
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [{"role": role, "content": blocks} for role, blocks in turns],
    }
    if turns and turns[-1][0] == "assistant":  # a prefill: Anthropic refuses one ending in whitespace
        _strip_trailing_space(turns[-1][1])
    if system:
        body["system"] = system
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.top_p is not None and request.top_p < 1:
        body["top_p"] = request.top_p
    elif request.temperature is not None:
        body["temperature"] = min(max(request.temperature, 0.0), 1.0)
    if request.user:
        body["metadata"] = {"user_id": request.user}
    body.update(tool_fields(request))
    if stream:
        body["stream"] = True
    return body


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Anthropic content blocks for one message; empty or blank text is dropped (Anthropic
    rejects a text block without a non-blank character). A tool message is its tool_result."""
    if message.get("role") == "tool":
        return [tool_result_block(message)]
    blocks: list[dict[str, Any]] = []
    for part in content_parts(message):
        text = part_text(part)
        if text and text.strip():
            blocks.append({"type": "text", "text": text})
        elif (url := part_image_url(part)) is not None:
            inline = parse_data_url(url)
            source = ({"type": "base64", "media_type": inline[0], "data": inline[1]} if inline
                      else {"type": "url", "url": url})
            blocks.append({"type": "image", "source": source})
    return blocks + tool_use_blocks(message)


def _strip_trailing_space(blocks: list[dict[str, Any]]) -> None:
    """The last text block of a final assistant turn, right-stripped ("Here is a haiku:\\n" →
    "...:"): the answer continues from the same words."""
    if blocks and blocks[-1]["type"] == "text":
        blocks[-1] = {**blocks[-1], "text": blocks[-1]["text"].rstrip()}


def _text_delta(kind: str | None, data: dict[str, Any]) -> str:
    """The text of a text_delta event ("" for any other event)."""
    delta = (data.get("delta") or {}) if kind == "content_block_delta" else {}
    if delta.get("type") != "text_delta" or not delta.get("text"):
        return ""
    if not isinstance(delta["text"], str):
        raise TypeError("a text_delta's text is not a string")
    return delta["text"]


def _finish(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "", "stop")


_INPUT_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _prompt_tokens(usage: dict[str, Any]) -> int | None:
    """Anthropic reports cached prompt tokens apart from input_tokens; all of them were read.
    None without input_tokens, or when any count is not a count (base.token_count)."""
    counts = [token_count(usage.get("input_tokens"))]
    counts += [token_count(usage.get(key), absent=0) for key in _INPUT_COUNTS[1:]]
    return None if None in counts else min(sum(c for c in counts if c is not None), MAX_TOKEN_COUNT)


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    return reported_usage(_prompt_tokens(data), token_count(data.get("output_tokens")),
                          cached=token_count(data.get("cache_read_input_tokens")))
