"""Each account's webhook signing secret, derived from the server's signing secret so it needs no
storage: `whsec_` + base64(HMAC-SHA256(server secret, "webhook:" + account id)). Users read it
at GET /api/v1/webhooks/secret and verify deliveries with any Standard Webhooks library."""

from __future__ import annotations

import base64
import hashlib
import hmac


def account_webhook_secret(server_secret: bytes, account_id: str) -> str:
    digest = hmac.new(server_secret, f"webhook:{account_id}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(digest).decode()
