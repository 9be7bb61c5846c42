"""GET /api/v1/webhooks/secret: the account's Standard Webhooks signing secret."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import PrincipalDep, ServicesDep
from api.responses import json_response
from api.schemas.responses import WebhookSecret, doc
from common.webhook_secrets import account_webhook_secret

router = APIRouter(prefix="/api/v1", tags=["webhooks"])


@router.get("/webhooks/secret", summary="The secret that signs this account's job webhooks (whsec_...)",
            responses=doc(WebhookSecret, 401))
async def webhook_secret(principal: PrincipalDep, services: ServicesDep) -> Any:
    return json_response({"object": "webhook_secret",
                          "secret": account_webhook_secret(services.signing_secret, principal.account_id)})
