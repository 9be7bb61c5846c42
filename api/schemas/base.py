"""The base of the JSON request bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

MAX_CONTENT_CHARS = 200_000  # the longest text a chat body's field holds (a message's, a tool's description)


class JSONBody(BaseModel):
    """A JSON request body: unknown fields ignored (the OpenAI SDKs send extras), JSON types strict.

    Pydantic's lax mode reads `true` as the integer 1, `"2"` as 2 and `"yes"` as a boolean, so a
    typo would be billed as something the caller never asked for; the OpenAI API rejects them,
    and so do we (400 naming the field). Strict floats still take JSON integers (`temperature: 1`).
    Python's JSON parser takes `NaN` and `Infinity`, which JSON has not: a number must be finite.
    Not for bodies that may arrive as forms, where every field is a string (see VideoCreateRequest).
    """

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StoredText(BaseModel):
    """For bodies whose strings are stored: PostgreSQL cannot keep a NUL character (U+0000) in
    text, so one is refused here with a 400 naming the field, not as a 500 from the database.
    (Chat messages are only passed on to the provider: they may hold one.)"""

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("it contains a NUL character (\\u0000)")
        return value


class OwnBody(JSONBody, StoredText):
    """A body of Helyx's own routes (keys, admin): no SDK sends extras there, so an unknown field
    is a mistake to report (`expires_in` for `expires_at` made a key that never expires)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class NullMeansDefault(BaseModel):
    """OpenAI takes `null` for an optional field as "not given" (its SDKs send `None` arguments
    as null, and some clients send every field): a null is dropped before validation wherever the
    field has a default, which then applies. A null for a required field is still refused."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: Any) -> Any:
        if not isinstance(data, dict) or None not in data.values():
            return data
        fields = cls.model_fields
        return {name: value for name, value in data.items()
                if value is not None or name not in fields or fields[name].is_required()}
