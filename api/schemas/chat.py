"""The chat completions request, as the OpenAI SDK sends it (unknown fields are ignored)."""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, ValidatorFunctionWrapHandler, field_validator

from api.schemas.base import MAX_CONTENT_CHARS, JSONBody, NullMeansDefault
from api.schemas.chat_tools import (
    MAX_TOOL_CALLS,
    MAX_TOOLS,
    AssistantToolCall,
    NamedToolChoice,
    ResponseFormat,
    ToolCallId,
    ToolDefinition,
    check_tool_turns,
)
from common.providers.messages import data_url_problem, message_text


class TextPart(JSONBody):
    type: Literal["text"]
    text: str = Field(max_length=200_000)


class RefusalPart(JSONBody):
    """An earlier assistant turn's refusal as a content part (OpenAI's assistant content form)."""

    type: Literal["refusal"]
    refusal: str = Field(max_length=200_000)


class ImageURL(JSONBody):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("url")
    @classmethod
    def _sendable(cls, url: str) -> str:
        """A URL no vendor would take (a data URL that is not base64 image bytes, anything but an
        http(s) URL with a host or a data URL) is refused here, before credits are held for it."""
        if url.startswith("data:"):
            problem = data_url_problem(url)
        else:
            parts = urlsplit(url)
            problem = None if parts.scheme in ("http", "https") and parts.hostname else (
                "An image URL is an http(s) URL (https://...) or a base64 data URL "
                "(data:image/png;base64,...).")
        if problem is not None:
            raise ValueError(problem)
        return url


class ImagePart(JSONBody):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


MAX_MESSAGES = 256
MAX_REASONING_CHARS = 4 * 1024 * 1024  # HELYX_MAX_BODY_BYTES' default bounds it before this does
Content = Annotated[str, Field(max_length=MAX_CONTENT_CHARS)]


class _Message(JSONBody):
    name: str | None = Field(default=None, max_length=64)

    def as_dict(self) -> dict[str, Any]:
        role = getattr(self, "role")  # noqa: B009 - every subclass declares it
        content = getattr(self, "content")  # noqa: B009
        data: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": content if isinstance(content, str | None) else [p.model_dump(exclude_none=True)
                                                                       for p in content],
        }
        if self.name:
            data["name"] = self.name
        return data


# An array of content parts has at least one, as OpenAI has it (an empty one was sent on, and charged).
# Arrays stop at their first bad item (fail_fast) and are bounded: a 4 MiB body of 2 million bad
# parts made one error each, gigabytes of them, on the event loop and before the key was checked.
MAX_CONTENT_PARTS = 512
# ... and in all the messages together: 256 messages of 512 parts each were 131,072 objects to
# validate on the event loop (~0.5 s) for one request whose last part was bad, a 400 that counts
# against no rate limit (found by a security review).
MAX_PARTS_PER_REQUEST = 2048
TextParts = Annotated[list[TextPart], Field(min_length=1, max_length=MAX_CONTENT_PARTS, fail_fast=True)]
ContentParts = Annotated[list[ContentPart], Field(min_length=1, max_length=MAX_CONTENT_PARTS, fail_fast=True)]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]
AssistantParts = Annotated[list[AssistantPart], Field(min_length=1, max_length=MAX_CONTENT_PARTS, fail_fast=True)]


class SystemMessage(_Message):
    role: Literal["system", "developer"]
    content: Content | TextParts


class UserMessage(_Message):
    role: Literal["user"]
    content: Content | ContentParts


class AssistantMessage(_Message):
    role: Literal["assistant"]
    # An earlier turn's refusal, where OpenAI's answer had one instead of content (the SDK's message
    # passed back as it came): sent on as that turn's text.
    refusal: str | None = Field(default=None, max_length=MAX_CONTENT_CHARS)
    # The thinking a reasoning model's answer came with (the response's `reasoning_content`), sent
    # back with the turn (the SDK's message object carries it): a vendor whose thinking models need
    # it in a tool loop gets it (catalog `replay_reasoning`), no other does. Bounded by what a body
    # may carry, not by a message's text: it is Helyx's own answer, which can think at length.
    reasoning_content: str | None = Field(default=None, max_length=MAX_REASONING_CHARS)
    tool_calls: Annotated[list[AssistantToolCall], Field(max_length=MAX_TOOL_CALLS, fail_fast=True)] | None = None
    # The legacy form of an earlier turn's call (OpenAI's deprecated `functions`): refused, as
    # `functions` is, rather than dropped on the way upstream.
    function_call: Any = Field(default=None, description="not supported: use tool_calls")
    content: Content | AssistantParts | None = Field(default=None, validate_default=True)  # checked after those

    @field_validator("content")
    @classmethod
    def _content_or_refusal(cls, content: object, info: ValidationInfo) -> object:
        """OpenAI takes an assistant turn without content only with tool calls: one with neither
        would be sent on and refused upstream, after a hold. A turn of thinking alone (a stream cut
        at its length limit before the answer began, as the SDK puts it together) is sent with empty
        content (as_dict)."""
        refused_calls = not {"tool_calls", "function_call"} <= info.data.keys()  # that error says it all
        if content is None and not info.data.get("refusal") and not info.data.get("tool_calls") \
                and info.data.get("reasoning_content") is None and not refused_calls:
            raise ValueError("an assistant message needs content, tool_calls or an earlier turn's refusal")
        return content

    @field_validator("function_call")
    @classmethod
    def _no_function_call(cls, value: object) -> object:
        if value:
            raise ValueError("the legacy function_call is not supported by this gateway: use tool_calls")
        return value

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        if data["content"] is None:
            data["content"] = self.refusal if self.refusal is not None or self.tool_calls else ""
        elif isinstance(data["content"], list):  # a refusal part is sent on as that turn's text
            data["content"] = [{"type": "text", "text": p["refusal"]} if p["type"] == "refusal" else p
                               for p in data["content"]]
        if self.tool_calls:
            data["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.reasoning_content is not None:  # an empty one too: DeepSeek wants it on a tool-call turn
            data["reasoning_content"] = self.reasoning_content
        return data


class ToolMessage(JSONBody):
    """A function tool's result, answering one call of the assistant message before it."""

    role: Literal["tool"]
    tool_call_id: ToolCallId
    content: Content | TextParts

    def as_dict(self) -> dict[str, Any]:
        content = self.content if isinstance(self.content, str) else [p.model_dump() for p in self.content]
        return {"role": "tool", "tool_call_id": self.tool_call_id, "content": content}


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]
StopSequence = Annotated[str, Field(min_length=1)]
MAX_STOP = 4
STOP_RULE = f"expected a non-empty string or an array of at most {MAX_STOP} non-empty strings"


class StreamOptions(JSONBody, NullMeansDefault):
    include_usage: bool = False


class ChatCompletionRequest(JSONBody, NullMeansDefault):
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES, fail_fast=True)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=1.0, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopSequence | Annotated[list[StopSequence], Field(max_length=MAX_STOP)] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = Field(default=None, max_length=256)
    n: int = Field(default=1, description="only 1 is supported", json_schema_extra={"minimum": 1, "maximum": 1})
    tools: Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS, fail_fast=True)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Not supported: refused when used, rather than ignored (a caller relying on them would get
    # plain text and never know why); accepted when empty, null or "none", as SDKs may send them.
    functions: list[Any] | None = Field(default=None, description="not supported (the legacy form): use tools")
    function_call: Any = Field(default=None, description='not supported (the legacy form): use tool_choice')
    response_format: ResponseFormat | None = None
    logprobs: bool | None = Field(default=None, description="not supported: only false")
    top_logprobs: int | None = Field(default=None, description="not supported: only 0")
    logit_bias: dict[str, Any] | None = Field(default=None, description="not supported: must be empty")
    modalities: list[Any] | None = Field(default=None, description='only ["text"]')
    audio: dict[str, Any] | None = Field(default=None, description="not supported: must be empty")
    web_search_options: dict[str, Any] | None = Field(default=None, description="not supported: must be null")
    moderation: dict[str, Any] | None = Field(default=None, description="not supported: must be null")
    # Accepted and not passed on (README, API notes), but typed as OpenAI types them: a wrong type is
    # the 400 OpenAI would answer, not a call served and charged as if the field were absent. The
    # enumerated strings are left open: OpenAI adds values with new models (reasoning_effort's "max").
    seed: int | None = Field(default=None, description="accepted, not passed on")
    store: bool | None = Field(default=None, description="accepted, ignored: every call is recorded")
    metadata: dict[str, str] | None = Field(default=None, description="accepted, ignored")
    reasoning_effort: str | None = Field(default=None, max_length=64, description="accepted, not passed on")
    verbosity: str | None = Field(default=None, max_length=64, description="accepted, not passed on")
    service_tier: str | None = Field(default=None, max_length=64, description="accepted, ignored")
    prediction: dict[str, Any] | None = Field(default=None, description="accepted, not passed on")
    prompt_cache_key: str | None = Field(default=None, max_length=1024, description="accepted, not passed on")
    safety_identifier: str | None = Field(default=None, max_length=256, description="accepted, not passed on")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported by this gateway: send one request per choice")
        return value

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        """As OpenAI answers it: a caller who sets it expects a stream (a bad `stream` is its own error)."""
        if value is not None and info.data.get("stream", True) is not True:
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    @field_validator("logprobs", "top_logprobs", "logit_bias")
    @classmethod
    def _no_token_level_control(cls, value: object) -> object:
        if value:
            raise ValueError("log probabilities and logit bias are not supported by this gateway")
        return value

    @field_validator("functions")
    @classmethod
    def _no_functions(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("the legacy functions are not supported by this gateway: send them as tools")
        return value

    @field_validator("function_call")
    @classmethod
    def _no_function_call(cls, value: object) -> object:
        if value not in (None, "none"):
            raise ValueError('the legacy function_call is not supported by this gateway: use tool_choice')
        return value

    @field_validator("tools")
    @classmethod
    def _distinct_names(cls, tools: list[ToolDefinition] | None) -> list[ToolDefinition] | None:
        names = [tool.function.name for tool in tools or ()]
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"two tools are named {twice!r}: each function needs its own name")
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, choice: object, info: ValidationInfo) -> object:
        """As OpenAI answers it: a choice other than "none" needs tools, and a named one, one of them."""
        if "tools" not in info.data:  # the tools' own error says it all
            return choice
        names = {tool.function.name for tool in info.data["tools"] or ()}
        if choice not in (None, "none") and not names:
            raise ValueError("tool_choice is only allowed when tools are given")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not among the tools")
        return choice

    @field_validator("modalities", "audio")
    @classmethod
    def _text_out_only(cls, value: object) -> object:
        if value and value != ["text"]:
            raise ValueError('audio output is not supported by this gateway; only modalities ["text"]')
        return value

    @field_validator("moderation")
    @classmethod
    def _no_moderation(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:  # a caller asking for blocking would get unmoderated output unawares
            raise ValueError("moderation of the input or output is not supported by this gateway")
        return value

    @field_validator("web_search_options")
    @classmethod
    def _no_web_search(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:  # even {}: it turns search on, with its defaults
            raise ValueError("web search is not supported by this gateway")
        return value

    @field_validator("response_format")
    @classmethod
    def _json_asked_for(cls, value: ResponseFormat | None, info: ValidationInfo) -> ResponseFormat | None:
        """OpenAI's own 400s: a schema format needs its schema's name; JSON mode needs the word
        "JSON" somewhere in the messages (a model told to answer in JSON without being asked may
        write whitespace until its limit)."""
        if value is None:
            return value
        value.sent()  # raises for a json_schema type without its json_schema
        messages = info.data.get("messages")
        if value.type == "json_object" and messages is not None and not any(
                "json" in message_text(m.as_dict(), " ").lower() for m in messages):
            raise ValueError("'messages' must contain the word 'json' in some form to use a response_format of "
                             "type 'json_object'")
        return value

    @field_validator("messages", mode="before")
    @classmethod
    def _bounded_parts(cls, messages: object) -> object:
        """Counted before any part is validated; the messages' own limit bounds this loop."""
        if isinstance(messages, list):
            parts = sum(min(len(m["content"]), MAX_CONTENT_PARTS) for m in messages[: MAX_MESSAGES + 1]  # one over
                        if isinstance(m, dict) and isinstance(m.get("content"), list))  # its own limit: its error
            if parts > MAX_PARTS_PER_REQUEST:
                raise ValueError(f"at most {MAX_PARTS_PER_REQUEST} content parts in all the messages, not {parts}")
        return messages

    @field_validator("messages")
    @classmethod
    def _tool_results_answer_calls(cls, messages: list[Any]) -> list[Any]:
        check_tool_turns(messages)
        return messages

    @field_validator("stop", mode="wrap")
    @classmethod
    def _stop(cls, value: object, handler: ValidatorFunctionWrapHandler) -> list[str] | None:
        """One message for every bad `stop`: pydantic's own names a union member and, for a
        list too long, never says the limit."""
        try:
            stop = handler(value)
        except ValidationError:
            raise ValueError(STOP_RULE) from None
        return [stop] if isinstance(stop, str) else stop

    def given(self) -> dict[str, Any]:
        """The fields the caller set (a null counts as not set), with their values."""
        return {name: getattr(self, name) for name in self.model_fields_set}

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    @property
    def max_tokens_field(self) -> str:
        """The name the caller used for the limit, for a 402 to name it back."""
        return "max_completion_tokens" if self.max_tokens is None and self.max_completion_tokens is not None \
            else "max_tokens"

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.as_dict() for m in self.messages]

    @cached_property
    def sent_tools(self) -> list[dict[str, Any]] | None:
        """The function tools as sent on (None for none: an empty list asks for nothing). Cached:
        the hold's estimate, the provider's checks and the call each read it."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None

    @cached_property
    def sent_response_format(self) -> dict[str, Any] | None:
        return self.response_format.sent() if self.response_format is not None else None

    @property
    def sent_tool_choice(self) -> str | dict[str, Any] | None:
        """tool_choice as sent on; None without tools (a "none" then asks for nothing)."""
        if not self.tools or self.tool_choice is None:
            return None
        return self.tool_choice if isinstance(self.tool_choice, str) else self.tool_choice.model_dump()
