"""The chat completions request, as the OpenAI SDK sends it (unknown fields are ignored)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, ValidatorFunctionWrapHandler, field_validator

from api.schemas.base import JSONBody, NullMeansDefault
from common.providers.messages import data_url_problem


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
MAX_CONTENT_CHARS = 200_000
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
    # An earlier turn's tool calls: refused, as `tools` is, rather than dropped on the way upstream.
    tool_calls: list[Any] | None = Field(default=None, description="not supported: must be empty")
    function_call: Any = Field(default=None, description="not supported")
    content: Content | AssistantParts | None = Field(default=None, validate_default=True)  # checked after those

    @field_validator("content")
    @classmethod
    def _content_or_refusal(cls, content: object, info: ValidationInfo) -> object:
        """OpenAI takes an assistant turn without content only with tool calls, which are refused
        here: one with neither would be sent on and refused upstream, after a hold."""
        refused_calls = not {"tool_calls", "function_call"} <= info.data.keys()  # that error says it all
        if content is None and not info.data.get("refusal") and not refused_calls:
            raise ValueError("an assistant message needs content (or an earlier turn's refusal)")
        return content

    @field_validator("tool_calls", "function_call")
    @classmethod
    def _no_tool_calls(cls, value: object) -> object:
        if value:
            raise ValueError("tool and function calling are not supported by this gateway")
        return value

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        if data["content"] is None:
            data["content"] = self.refusal
        elif isinstance(data["content"], list):  # a refusal part is sent on as that turn's text
            data["content"] = [{"type": "text", "text": p["refusal"]} if p["type"] == "refusal" else p
                               for p in data["content"]]
        return data


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]
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
    # Not supported: refused when used, rather than ignored (a caller relying on them would get
    # plain text and never know why); accepted when empty, null or "none", as SDKs may send them.
    tools: list[Any] | None = Field(default=None, description="not supported: must be empty")
    functions: list[Any] | None = Field(default=None, description="not supported: must be empty")
    tool_choice: Any = Field(default=None, description='not supported: only "none"')
    function_call: Any = Field(default=None, description='not supported: only "none"')
    response_format: dict[str, Any] | None = Field(default=None, description='only {"type": "text"}')
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
    parallel_tool_calls: bool | None = Field(default=None, description="accepted, ignored: no tools are served")
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

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tool and function calling are not supported by this gateway")
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: object) -> object:
        if value not in (None, "none"):
            raise ValueError('tool and function calling are not supported by this gateway; only "none" is accepted')
        return value

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
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and "type" not in value:  # OpenAI refuses it too: its type is required
            raise ValueError('a response_format without its type is not supported; only {"type": "text"}')
        if value is not None and value["type"] != "text":
            raise ValueError('JSON response formats are not supported by this gateway; only {"type": "text"}')
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
