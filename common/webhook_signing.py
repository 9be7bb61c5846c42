"""Standard Webhooks signatures (symmetric, `v1`), https://www.standardwebhooks.com/.

Sender: `webhook-signature: v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`,
where the key is the secret's bytes: a `whsec_<base64>` secret is base64-decoded first, as the
spec and its reference libraries do. Receiver: check the timestamp is within a tolerance of now
(replay protection), then accept when any space-separated `v1` entry matches in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 5 * 60
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")


class WebhookVerificationError(ValueError):
    """A delivery that must not be trusted: missing headers, stale timestamp, no valid signature."""


def generate_secret(nbytes: int = 32) -> str:
    """A fresh `whsec_<base64>` secret (the spec asks for at least 24 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def decode_secret(secret: bytes | str) -> bytes:
    """The HMAC key. `whsec_<base64>` (str or bytes) and bare base64 str are decoded; other bytes
    are used as they are."""
    if isinstance(secret, bytes):
        if not secret.startswith(SECRET_PREFIX.encode("ascii")):
            key = secret
        else:
            key = _b64decode(secret.decode("ascii", "replace").removeprefix(SECRET_PREFIX))
    else:
        key = _b64decode(secret.removeprefix(SECRET_PREFIX))
    if not key:
        raise ValueError("webhook secret must not be empty")
    return key


def sign(secret: bytes | str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value, `v1,<base64>`, for one attempt of one message."""
    if not msg_id or "." in msg_id:
        raise ValueError("webhook id must be non-empty and contain no '.'")
    if isinstance(timestamp, bool) or timestamp < 0:
        raise ValueError("webhook timestamp must be Unix seconds")
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: bytes | str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: int | None = None,
) -> None:
    """Receiver side: return if the delivery is authentic, else raise `WebhookVerificationError`.

    `body` must be the raw request bytes, not re-serialized JSON.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    raw_timestamp = lowered.get("webhook-timestamp")
    raw_signatures = lowered.get("webhook-signature")
    if not (msg_id and raw_timestamp and raw_signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not _TIMESTAMP_RE.fullmatch(raw_timestamp.strip()):
        raise WebhookVerificationError("invalid webhook-timestamp")
    timestamp = int(raw_timestamp)
    current = int(time.time()) if now is None else now
    if timestamp < current - tolerance:
        raise WebhookVerificationError("webhook-timestamp too old")
    if timestamp > current + tolerance:
        raise WebhookVerificationError("webhook-timestamp too new")
    try:
        expected = base64.b64decode(sign(secret, msg_id, timestamp, body).split(",", 1)[1])
    except ValueError as exc:  # a webhook-id containing '.'
        raise WebhookVerificationError("invalid webhook-id") from exc
    matched = False
    for entry in raw_signatures.split():
        version, _, value = entry.partition(",")
        if version != "v1":
            continue  # other schemes (e.g. v1a) may sit alongside; they are not ours to check
        try:
            candidate = base64.b64decode(value, validate=True)
        except binascii.Error:
            continue
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("no matching signature")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("webhook secret is not valid base64") from exc
