"""Signed, expiring URLs for stored files, and the secret that signs them.

A URL carries `expires` (Unix seconds) and `signature` = urlsafe base64 (no padding) of
HMAC-SHA256(secret, "helyx-file-v1\\n<file_id>\\n<expires>"). The purpose prefix keeps these
signatures from being valid for anything else signed with the same secret. A URL is valid while
`now < expires`.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from contextlib import suppress
from pathlib import Path
from urllib.parse import quote

SECRET_FILE_NAME = ".signing-key"
_PURPOSE = b"helyx-file-v1"
_EXPIRES_RE = re.compile(r"0|[1-9][0-9]{0,11}")  # as the link writes it: another spelling is another link
_SIGNATURE_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, urlsafe base64 without padding


def file_signature(file_id: str, expires_at: int, secret: bytes) -> str:
    """The `signature` query value for this file and expiry."""
    file_part = file_id.encode("utf-8", "surrogatepass")  # never raises on odd path input
    message = b"\n".join((_PURPOSE, file_part, str(int(expires_at)).encode("ascii")))
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_file_url(base_path: str, file_id: str, expires_at: int, secret: bytes) -> str:
    """`{base_path}/files/{file_id}/content?expires=...&signature=...`, e.g. base_path `/api/v1`."""
    if expires_at < 0:
        raise ValueError("expires_at must be a Unix timestamp")
    signature = file_signature(file_id, expires_at, secret)
    path = f"{base_path.rstrip('/')}/files/{quote(file_id, safe='')}/content"
    return f"{path}?expires={int(expires_at)}&signature={signature}"


def expiry_of(expires: str | None) -> int | None:
    """A link's `expires` value as the timestamp it names, or None when it names none (at most 12
    ASCII digits: `int()` also reads other scripts' digits and refuses thousands of them)."""
    return int(expires) if expires is not None and _EXPIRES_RE.fullmatch(expires) else None


def verify_file_signature(
    file_id: str, expires: str | int | None, signature: str | None, secret: bytes, now: int
) -> bool:
    """True only for a well-formed, unexpired signature of exactly this file id (constant time)."""
    if isinstance(expires, bool) or expires is None or not isinstance(signature, str):
        return False
    if isinstance(expires, str):
        parsed = expiry_of(expires)
        if parsed is None:
            return False
        expires = parsed
    if expires < 0 or now >= expires:
        return False
    if not _SIGNATURE_RE.fullmatch(signature):
        return False
    return hmac.compare_digest(file_signature(file_id, expires, secret), signature)


def load_or_create_secret(settings_secret: str | None, storage_dir: Path) -> bytes:
    """The configured secret when set; otherwise one generated once into `storage_dir/.signing-key`.

    The generated secret is 32 random bytes written as urlsafe base64 text, and the key is that
    text's bytes, so an operator can copy the file's content into `HELYX_SECRET_KEY` (to share it
    between hosts) and every URL already handed out stays valid.

    Creation is race-free: the secret is written and fsynced to a private temp file, then published
    with `os.link`, which, like `open(O_CREAT | O_EXCL)`, fails with EEXIST when another process
    won; the loser reads the winner's file. Unlike creating the final file with O_EXCL and then
    writing it, a reader can never see it empty or half-written, and a crash leaves only a stray
    temp file behind, never a broken key.
    """
    if settings_secret:
        return settings_secret.encode("utf-8")
    storage_dir.mkdir(parents=True, exist_ok=True)
    path = storage_dir / SECRET_FILE_NAME
    with suppress(FileNotFoundError):
        return _read_secret(path)
    _publish_new_secret(path)
    return _read_secret(path)


def _publish_new_secret(path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f"{SECRET_FILE_NAME}.tmp-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_urlsafe(32).encode("ascii") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def _read_secret(path: Path) -> bytes:
    secret = path.read_bytes().strip()
    if not secret:
        raise RuntimeError(f"{path} is empty; delete it to generate a new signing key")
    return secret
