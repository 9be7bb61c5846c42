"""The chat request's function tools and answer formats: their definitions, a tool_choice, an
earlier turn's calls, and the rule every conversation with tool calls keeps."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from api.schemas.base import MAX_CONTENT_CHARS, JSONBody
from common.providers.base import MAX_TOOL_CALL_ID

TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for a function's name (Anthropic's and Gemini's allow it)
MAX_TOOLS = 128  # OpenAI's limit
MAX_TOOL_CALLS = 128  # in one assistant message
ToolName = Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]
ToolCallId = Annotated[str, Field(min_length=1, max_length=MAX_TOOL_CALL_ID)]


class CalledFunction(JSONBody):
    name: ToolName
    arguments: str = Field(max_length=MAX_CONTENT_CHARS)  # JSON text, as the model wrote it


class AssistantToolCall(JSONBody):
    """An earlier turn's call of a function tool, as the SDK passes the model's message back."""

    id: ToolCallId
    type: Literal["function"]
    function: CalledFunction


class FunctionDefinition(JSONBody):
    name: ToolName
    description: str | None = Field(default=None, max_length=MAX_CONTENT_CHARS)
    parameters: dict[str, Any] | None = None  # a JSON Schema object, passed on as it is
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _an_objects_schema(cls, parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        """Every vendor takes a function's arguments as an object (OpenAI, Anthropic and Gemini
        refuse any other schema): refused here, not by the vendor after the hold."""
        if parameters and parameters.get("type", "object") != "object":
            raise ValueError('a function\'s parameters are the JSON Schema of an object ("type": "object")')
        return parameters


class ToolDefinition(JSONBody):
    type: Literal["function"]
    function: FunctionDefinition


class JSONSchemaFormat(JSONBody):
    name: ToolName  # OpenAI's rule for a schema's name is a function's
    description: str | None = Field(default=None, max_length=MAX_CONTENT_CHARS)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")  # a JSON Schema, passed on as it is
    strict: bool | None = None


class ResponseFormat(JSONBody):
    """The answer's format: text (the default), any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @field_validator("json_schema")
    @classmethod
    def _with_its_type(cls, value: JSONSchemaFormat | None, info: ValidationInfo) -> JSONSchemaFormat | None:
        if value is not None and info.data.get("type") != "json_schema":
            raise ValueError('json_schema goes only with "type": "json_schema"')
        return value

    def sent(self) -> dict[str, Any] | None:
        """OpenAI's form as sent on; None for text (nothing to ask for)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        if self.json_schema is None:
            raise ValueError('"type": "json_schema" needs its json_schema')
        return {"type": "json_schema", "json_schema": self.json_schema.model_dump(exclude_none=True, by_alias=True)}


class NamedFunction(JSONBody):
    name: ToolName


class NamedToolChoice(JSONBody):
    type: Literal["function"]
    function: NamedFunction


def check_tool_turns(messages: list[Any]) -> None:
    """OpenAI's rule, which Anthropic's and Gemini's APIs hold too: the tool messages right
    after an assistant message with tool_calls answer those calls, each one once, and only
    there; refused here (ValueError) rather than by the vendor after a hold."""
    open_calls: set[str] | None = None  # the calls still to answer, while in a run of tool results
    for index, message in enumerate(messages):
        if message.role == "tool":
            if open_calls is None or message.tool_call_id not in open_calls:
                raise ValueError(f"message {index} (role tool) answers tool call {message.tool_call_id!r}, which "
                                 "is not an unanswered call of the assistant message before it")
            open_calls.discard(message.tool_call_id)
            continue
        if open_calls:
            raise ValueError(f"message {index}: the tool calls {sorted(open_calls)} of the assistant message "
                             "before it need their results (role tool messages) first")
        calls = [call.id for call in getattr(message, "tool_calls", None) or ()]
        if len(set(calls)) != len(calls):
            raise ValueError(f"message {index} has two tool calls with one id")
        open_calls = set(calls) if calls else None
    if open_calls:
        raise ValueError(f"the tool calls {sorted(open_calls)} of the last assistant message need their "
                         "results (role tool messages) after it")
