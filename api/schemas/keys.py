"""The body that makes an API key and the answer that shows its secret, once: for the account's
own POST /api/v1/keys and the operator's POST /admin/accounts/{id}/keys."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from sqlalchemy import Engine

from api.schemas.base import NullMeansDefault, OwnBody
from api.schemas.credits import CreditAmount, micro_of
from common import accounts, clock
from common.money import to_credits


class AdminKeyCreate(OwnBody):
    name: str = Field(default="", max_length=accounts.MAX_KEY_NAME_CHARS)
    expires_at: float | None = Field(default=None, description="unix seconds; omit for no expiry")
    daily_credit_cap: CreditAmount | None = None

    def create(self, engine: Engine, account_id: str, *, count_recent: bool) -> accounts.NewKey:
        """The key this body asks for (see accounts.create_key for `count_recent`)."""
        cap = micro_of(self.daily_credit_cap) if self.daily_credit_cap is not None else None
        with engine.begin() as conn:
            return accounts.create_key(conn, account_id, name=self.name, now=clock.now().timestamp(),
                                       expires_at=self.expires_at, daily_cap=cap, count_recent=count_recent)


# A null is the default, as on the OpenAI routes (not on the operator's admin routes, where
# `"plan": null` is refused rather than read as free). No docstring: it would be the schema's
# description in the OpenAPI document.
class KeyCreate(AdminKeyCreate, NullMeansDefault):
    pass


def key_created(key: accounts.NewKey) -> dict[str, Any]:
    cap = to_credits(key.daily_cap) if key.daily_cap is not None else None
    return {"id": key.id, "object": "api_key", "key": key.secret, "name": key.name, "prefix": key.prefix,
            "created_at": key.created_at, "expires_at": key.expires_at, "daily_credit_cap": cap,
            "daily_credit_cap_remaining": cap}
