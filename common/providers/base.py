"""The small interface every provider adapter implements.

An adapter speaks one wire protocol. It is built with an injected `httpx.AsyncClient` (pooled,
shared, with explicit timeouts), the upstream `base_url` and the provider key. It turns every
vendor failure into `common.errors.UpstreamError` (or `UpstreamTimeout`) with `retryable` set
for connection errors, 429 and 5xx, and `retryable=False` for everything else (an upstream 401
or 403 means *our* provider key is wrong: the client sees a 502, never a 401).

Adapters never retry, never bill and never touch the database: retries happen in
`common.providers.retry`, billing in the ledger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# The sampling fields of a chat request a vendor may be sent (the catalog may withhold them per model).
SAMPLING_FIELDS = ("temperature", "top_p", "stop", "presence_penalty", "frequency_penalty")


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # What the vendor said of its own counts, passed on as OpenAI's usage details (billing reads
    # only the two above): prompt tokens read from its cache, completion tokens spent reasoning.
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def openai_view(self) -> dict[str, Any]:
        """OpenAI's usage object; its details only where the vendor stated them."""
        shown: dict[str, Any] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                                 "total_tokens": self.total_tokens}
        if self.cached_tokens is not None:
            shown["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens is not None:
            shown["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return shown


# The generations table's column holds this much; no context window comes near it, and the
# charge is capped at the hold long before.
MAX_TOKEN_COUNT = 2**31 - 1


def token_count(value: Any, *, absent: int | None = None) -> int | None:
    """A token count as a vendor reported it, or None when it is not one (negative, fractional, a
    string, a boolean): the usage is then estimated, as when a vendor reports none. A negative
    count must never lower the charge for what was produced, nor a string fail the call after
    the vendor answered. `absent` is what a missing count means. Beyond MAX_TOKEN_COUNT: that."""
    if value is None:
        return absent
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, MAX_TOKEN_COUNT)


def reported_usage(prompt_tokens: int | None, completion_tokens: int | None, *, cached: int | None = None,
                   reasoning: int | None = None) -> Usage | None:
    """A vendor's usage when both counts are counts (token_count), else None: the caller estimates."""
    if prompt_tokens is None or completion_tokens is None:
        return None
    return Usage(prompt_tokens, completion_tokens, cached, reasoning)


# The longest tool call id a request may send back: room for the thought signature a Gemini id
# carries (common.providers.gemini_tools), whose length Google does not fix.
MAX_TOOL_CALL_ID = 16_384


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call of one of the request's function tools, as the model made it, in OpenAI's terms:
    `arguments` is JSON text (the model's own; not guaranteed to be valid JSON)."""

    id: str
    name: str
    arguments: str

    def openai_view(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call, as OpenAI streams it: the first piece of call `index`
    (0, 1, ... in the order the model made them) carries its `id` and `name`; any piece may carry
    the next fragment of its `arguments` JSON text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def openai_view(self) -> dict[str, Any]:
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.name is not None:
            function = {"name": self.name, **function}
        shown: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            shown.update(id=self.id, type="function")
        shown["function"] = function
        return shown


@dataclass(slots=True)
class ChatRequest:
    """A validated chat request in OpenAI terms; `model` is the *upstream* model name.

    `messages` are OpenAI chat messages: {"role": "system"|"user"|"assistant"|"tool", "content": str,
    None, or a list of content parts such as {"type": "text", "text": ...} or
    {"type": "image_url", "image_url": {"url": ...}}}. An assistant message may carry
    "tool_calls" ([{"id", "type": "function", "function": {"name", "arguments"}}], its content
    then possibly None), and "reasoning_content", the thinking the vendor returned with that turn
    (ChatResult.reasoning; sent back only to a vendor that asks for it); a "tool" message answers
    one of them: {"role": "tool", "tool_call_id", "content"}. The request's validation
    (api.schemas.chat) guarantees every tool message answers a call of the assistant message before
    it, and every such call is answered.

    `tools` are OpenAI function tools ([{"type": "function", "function": {"name", "description"?,
    "parameters"?}}]) or None; `tool_choice` is None (the vendor's default: "auto" when there are
    tools), "none", "auto", "required" or {"type": "function", "function": {"name": ...}} naming
    one of them; `parallel_tool_calls` None (the vendor's default) or a bool. `response_format`
    is None (text) or OpenAI's {"type": "json_object"} or {"type": "json_schema", "json_schema":
    {"name", "description"?, "schema"?, "strict"?}}, for a provider whose `json_output` is true.
    """

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None


@dataclass(slots=True)
class ChatResult:
    content: str
    finish_reason: str  # OpenAI terms: stop | length | content_filter | tool_calls
    usage: Usage | None  # None when the upstream did not report usage
    system_fingerprint: str | None = None
    refusal: str | None = None  # OpenAI's: the model declined, saying why here (content then empty)
    tool_calls: list[ToolCall] = field(default_factory=list)  # content may be empty then
    # A reasoning model's thinking, where the vendor returns it apart from the answer (DeepSeek's and
    # Moonshot's `reasoning_content`): shown to the caller under that name, who sends it back with the
    # turn (a thinking model's tool loop needs it: ChatRequest's messages, `reasoning_content`).
    reasoning: str | None = None  # None: the vendor sent no thinking field


@dataclass(slots=True)
class ChatDelta:
    """One streamed piece. The last piece of a stream has `finish_reason`; `usage` may come with
    it or on a later, content-less delta (as OpenAI's include_usage chunk does)."""

    content: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    refusal: str = ""  # a piece of OpenAI's refusal text, streamed apart from the content
    # The prompt's count where a vendor states it before the end (Anthropic's message_start,
    # Gemini's every chunk): a stream cut or failed before its usage is charged it, not an estimate.
    prompt_tokens: int | None = None
    system_fingerprint: str | None = None  # OpenAI-compatible: the backend configuration, as its chunks state it
    # A reasoning model's thinking, streamed apart from the answer: sent on as `reasoning_content`
    # (ChatResult.reasoning), and produced and billed by the vendor, so a stream cut meanwhile is
    # charged for it.
    thinking: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@runtime_checkable
class ChatProvider(Protocol):
    # Whether the vendor can be asked for JSON answers (`ChatRequest.response_format`); a request
    # that asks one that cannot is a 400 before anything is held.
    json_output: bool

    def refuse_unsendable(self, messages: list[dict[str, Any]], stop: list[str] | None = None,
                          tools: list[dict[str, Any]] | None = None) -> None:
        """A 400 (InvalidRequest, before anything is held) for a conversation, stop sequences
        (the ones that would be sent) or tools this vendor refuses outright that the request's
        validation let through; nothing for what it takes."""
        ...

    async def complete(self, request: ChatRequest) -> ChatResult: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """An async generator of deltas. Closing it (aclose) must close the upstream response."""
        ...


@dataclass(slots=True)
class MediaFile:
    data: bytes
    content_type: str  # image/png, video/mp4, ...


@dataclass(slots=True)
class ImageRequest:
    model: str  # upstream model
    prompt: str
    width: int
    height: int
    n: int = 1


@dataclass(slots=True)
class VideoRequest:
    model: str  # upstream model
    prompt: str
    seconds: int
    width: int
    height: int


ProgressCallback = Callable[[int], None]


@runtime_checkable
class ImageProvider(Protocol):
    async def generate_images(self, request: ImageRequest) -> list[MediaFile]:
        """Exactly `request.n` images, or an UpstreamError."""
        ...


@runtime_checkable
class VideoProvider(Protocol):
    async def generate_video(
        self, request: VideoRequest, on_progress: ProgressCallback | None = None
    ) -> MediaFile:
        """One playable video; `on_progress(0..100)` may be called while the upstream works."""
        ...


@dataclass(slots=True)
class ProviderConfig:
    """What the catalog says about one provider."""

    name: str
    kind: str  # openai | anthropic | gemini | veo | simulated
    base_url: str = ""
    api_key_env: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
