"""`hx-` API keys: generation, a checksum that refuses typos before any query, and hashing.

Format: `hx-` + 40 base62 random characters (≈238 bits) + 6 base62 characters of checksum
(the first bytes of SHA-256 over the random part). Only the SHA-256 of the whole key and a
short display prefix are ever stored.
"""

from __future__ import annotations

import hashlib
import secrets

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIX = "hx-"
BODY_LEN = 40
CHECK_LEN = 6
KEY_LEN = len(PREFIX) + BODY_LEN + CHECK_LEN
_ALLOWED = frozenset(ALPHABET)


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    digest = hashlib.sha256(body.encode()).digest()
    return _base62(int.from_bytes(digest[:8], "big"), CHECK_LEN)


def generate_key() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LEN))
    return PREFIX + body + _checksum(body)


def is_well_formed(key: str) -> bool:
    """Shape and checksum only: no database involved."""
    if len(key) != KEY_LEN or not key.startswith(PREFIX):
        return False
    rest = key[len(PREFIX) :]
    if not _ALLOWED.issuperset(rest):
        return False
    body, check = rest[:BODY_LEN], rest[BODY_LEN:]
    return secrets.compare_digest(_checksum(body), check)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(PREFIX) + 8]
