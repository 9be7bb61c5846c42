"""The base of the JSON request bodies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class JSONBody(BaseModel):
    """A JSON request body: unknown fields ignored (the OpenAI SDKs send extras), JSON types strict.

    Pydantic's lax mode reads `true` as the integer 1, `"2"` as 2 and `"yes"` as a boolean, so a
    typo would be billed as something the caller never asked for; the OpenAI API rejects them,
    and so do we (400 naming the field). Strict floats still take JSON integers (`temperature: 1`).
    Not for bodies that may arrive as forms, where every field is a string (see VideoCreateRequest).
    """

    model_config = ConfigDict(extra="ignore", strict=True)


class OwnBody(JSONBody):
    """A body of Helyx's own routes (keys, admin): no SDK sends extras there, so an unknown field
    is a mistake to report (`expires_in` for `expires_at` made a key that never expires)."""

    model_config = ConfigDict(extra="forbid", strict=True)
