"""Adapter for the Gemini API's generateContent (chat only; images live in their own adapter).

- `base_url` includes the API version ("https://generativelanguage.googleapis.com/v1beta"); the
  adapter POSTs to `{base_url}/models/{model}:generateContent` and, for streams,
  `:streamGenerateContent?alt=sse`, with the key in the `x-goog-api-key` header (never the URL).
- System messages become `systemInstruction`; user/assistant become user/model turns, merged so
  they alternate. Images: data: URLs go inline (`inlineData`), http(s) URLs as `fileData` (the
  Gemini API fetches public and signed URLs itself).
- Function tools, tool calls and their results: see common.providers.gemini_tools (Gemini's
  calls carry thought signatures, which travel back inside the OpenAI call ids we return; a
  turn's results go in a user Content of their own). An answer with function calls finishes as
  `tool_calls` (Gemini says STOP).
- Penalties are sent only when non-zero: several Gemini models reject the fields outright.
- Thinking models report `thoughtsTokenCount` apart from `candidatesTokenCount`; both are
  output the vendor bills, so both count as completion tokens.
- A prompt Google's filters block (`promptFeedback.blockReason`, no candidates) is a 400
  `content_filtered` to the client (as an image prompt's), nothing charged; an answer its filters
  cut (a candidate's finishReason SAFETY and the like) finishes as `content_filter`, charged.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from typing import Any

import httpx

from common.errors import UpstreamError, UpstreamRejectedRequest
from common.providers.base import (
    MAX_TOKEN_COUNT,
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
from common.providers.gemini_tools import (
    call_parts,
    calls_in,
    naming_results,
    refuse_unsendable_tools,
    response_part,
    tool_config,
    tools_field,
    turn_contents,
)
from common.providers.google_errors import google_error, is_bad_key
from common.providers.http import (
    UpstreamClient,
    failure_in_body,
    iter_sse,
    raise_for_status,
    status_error,
)
from common.providers.image_types import GEMINI_IMAGE_TYPES
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

PROVIDER = "gemini"


class GeminiChatProvider:
    json_output = True  # generationConfig's responseMimeType, with responseJsonSchema for a schema

    def __init__(self, client: UpstreamClient, base_url: str, api_key: str | None) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._api_key = api_key

    def _url(self, model: str, method: str) -> str:
        return f"{self._base}/models/{model.removeprefix('models/')}:{method}"

    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._api_key} if self._api_key else {}

    async def _check(self, response: httpx.Response) -> None:
        # Google answers a bad API key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID, or in words).
        if response.status_code == 400:
            await response.aread()
            if is_bad_key(google_error(response)):
                raise status_error(401, response.content, response.headers, PROVIDER, self._api_key)
        await raise_for_status(response, PROVIDER, self._api_key)

    def refuse_unsendable(self, messages: list[dict[str, Any]], stop: list[str] | None = None,
                          tools: list[dict[str, Any]] | None = None) -> None:
        refuse_empty_conversation(messages, "Gemini")
        refuse_image_types(messages, GEMINI_IMAGE_TYPES, "Gemini")
        refuse_unsendable_tools(messages, tools)

    async def complete(self, request: ChatRequest) -> ChatResult:
        with upstream_errors(PROVIDER):
            response = await self._client.post_json(self._url(request.model, "generateContent"),
                                                    build_body(request), self._headers())
            await self._check(response)
            data = parse_json(response.content, PROVIDER)
        with malformed_answers(PROVIDER):
            content, calls, finish_reason = self._read_chunk(data)
            return ChatResult(content=content, finish_reason=_with_calls(finish_reason or "stop", bool(calls)),
                              usage=_usage(data.get("usageMetadata")), tool_calls=calls)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        finish_reason: str | None = None
        usage: Usage | None = None
        calls_made = 0  # OpenAI numbers a stream's calls from 0, across its chunks
        url = self._url(request.model, "streamGenerateContent")
        with upstream_errors(PROVIDER), malformed_answers(PROVIDER):
            async with self._client.stream_json(url, build_body(request), self._headers(),
                                                params={"alt": "sse"}) as response:
                await self._check(response)
                async for event in iter_sse(response):
                    data = parse_json(event.data, PROVIDER)
                    content, calls, finish = self._read_chunk(data)
                    finish_reason = finish or finish_reason
                    usage = _usage(data.get("usageMetadata")) or usage  # cumulative: last wins
                    if content or calls:
                        yield ChatDelta(content=content, prompt_tokens=_prompt_count(data.get("usageMetadata")),
                                        tool_calls=_deltas(calls, calls_made))
                        calls_made += len(calls)
        # Gemini has no end-of-stream marker: a stream is complete once a finishReason came.
        if finish_reason is None:
            raise UpstreamError(f"The upstream provider ({PROVIDER}) ended the stream early",
                                retryable=True)
        yield ChatDelta(finish_reason=_with_calls(finish_reason, calls_made > 0), usage=usage)

    def _read_chunk(self, data: Any) -> tuple[str, list[ToolCall], str | None]:
        """(text, function calls, finish reason in OpenAI terms or None) of one GenerateContentResponse."""
        if not isinstance(data, dict):
            raise UpstreamError(f"The upstream provider ({PROVIDER}) sent an unexpected body",
                                code="upstream_bad_response")
        if data.get("error"):
            message = vendor_message(str((data["error"] or {}).get("message", "")).encode(), self._api_key)
            raise failure_in_body(PROVIDER, message, retryable=True)
        candidates = data.get("candidates") or []
        if not candidates:
            blocked = (data.get("promptFeedback") or {}).get("blockReason")
            if blocked:  # the prompt itself, before any answer: refused as OpenAI refuses one, nothing charged
                raise UpstreamRejectedRequest(
                    f"The upstream provider ({PROVIDER}) refused the prompt: its safety filters blocked it "
                    f"({blocked})", upstream_status=200, code="content_filtered", param="messages")
            return "", [], None
        candidate = candidates[0]
        parts = (candidate.get("content") or {}).get("parts") or []
        text = "".join(p.get("text", "") for p in parts if not p.get("thought"))
        return text, calls_in(parts), _finish(candidate.get("finishReason"))


def build_body(request: ChatRequest) -> dict[str, Any]:
    """The generateContent body for an OpenAI-shaped request."""
    system, turns = system_and_turns(naming_results(request.messages),
                                     lambda m: "model" if role_of(m) == "assistant" else "user", _parts)
    config: dict[str, Any] = {"maxOutputTokens": request.max_tokens}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.stop:
        config["stopSequences"] = list(request.stop)
    if request.presence_penalty:
        config["presencePenalty"] = request.presence_penalty
    if request.frequency_penalty:
        config["frequencyPenalty"] = request.frequency_penalty
    if request.response_format is not None:  # JSON mode; a schema goes as it came, as a tool's parameters do
        config["responseMimeType"] = "application/json"
        schema = (request.response_format.get("json_schema") or {}).get("schema")
        if schema:
            config["responseJsonSchema"] = schema
    body: dict[str, Any] = {
        "contents": [content for role, parts in turns for content in turn_contents(role, parts)],
        "generationConfig": config,
    }
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if request.tools:
        body["tools"] = tools_field(request.tools)
        if (choice := tool_config(request.tool_choice)) is not None:
            body["toolConfig"] = choice
    return body


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's Gemini parts: its text and images, then an assistant's function calls; a tool
    message is its function's response."""
    if message.get("role") == "tool":
        return [response_part(message)]
    parts: list[dict[str, Any]] = []
    for part in content_parts(message):
        text = part_text(part)
        if text:
            parts.append({"text": text})
        elif (url := part_image_url(part)) is not None:
            inline = parse_data_url(url)
            if inline:
                parts.append({"inlineData": {"mimeType": inline[0], "data": inline[1]}})
            else:
                mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
                parts.append({"fileData": {"mimeType": mime, "fileUri": url}})
    return parts + call_parts(message)


def _deltas(calls: list[ToolCall], first_index: int) -> list[ToolCallDelta]:
    """A chunk's calls as stream pieces: Gemini sends each call whole, so one piece per call."""
    return [ToolCallDelta(first_index + k, call.id, call.name, call.arguments) for k, call in enumerate(calls)]


def _with_calls(finish_reason: str, called: bool) -> str:
    """OpenAI's `tool_calls` for an answer that called functions and ended normally (Gemini: STOP)."""
    return "tool_calls" if called and finish_reason == "stop" else finish_reason


def _finish(reason: str | None) -> str | None:
    """STOP → stop, MAX_TOKENS → length; every other reason (SAFETY, RECITATION, BLOCKLIST,
    PROHIBITED_CONTENT, SPII, OTHER, ...) means the vendor withheld output: content_filter."""
    if not reason or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    return {"STOP": "stop", "MAX_TOKENS": "length"}.get(reason, "content_filter")


def _prompt_count(data: Any) -> int | None:
    return token_count(data.get("promptTokenCount")) if isinstance(data, dict) else None


def _usage(data: Any) -> Usage | None:
    """Gemini leaves out a count that is zero (candidates of a withheld answer, thoughts of a
    model that does not think); the prompt's count it always sends."""
    if not isinstance(data, dict):
        return None
    candidates = token_count(data.get("candidatesTokenCount"), absent=0)
    thoughts = token_count(data.get("thoughtsTokenCount"), absent=0)
    completion = None if candidates is None or thoughts is None else min(candidates + thoughts, MAX_TOKEN_COUNT)
    return reported_usage(token_count(data.get("promptTokenCount")), completion,
                          cached=token_count(data.get("cachedContentTokenCount")),
                          reasoning=thoughts if "thoughtsTokenCount" in data else None)
