"""What an inline image (a base64 `data:` URL) is, by its bytes where they say it.

Anthropic refuses an image whose bytes do not match the media type sent with it, and clients label
images loosely (`image/jpg`, a PNG sent as `image/jpeg`, no type at all), which OpenAI takes. So the
type sent on is the one the first bytes show for the formats vendors take, else the declared one
(lower-cased, `image/jpg` read as `image/jpeg`), else `image/png`.
"""

from __future__ import annotations

import base64
import binascii

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_WEBP = "image/webp"  # RIFF....WEBP: a signature with a gap (sniffed_type)
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
SNIFFED_TYPES = frozenset({kind for _, kind in _SIGNATURES} | {_WEBP})  # what the first bytes tell

ANTHROPIC_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})  # its base64 source
GEMINI_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})


def media_type(declared: str | None, data: str) -> str:
    """The type to send an inline image's base64 `data` under (see the module docstring)."""
    return sniffed_type(data) or declared_type(declared) or "image/png"


def sniffed_type(data: str) -> str | None:
    """The type the first bytes of base64 `data` show, if one of SNIFFED_TYPES."""
    head = _head(data)
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _WEBP
    return None


def declared_type(declared: str | None) -> str | None:
    """A data URL's label, lower-cased, `image/jpg` read as `image/jpeg`; None for none."""
    if not declared:
        return None
    declared = declared.lower()
    return _ALIASES.get(declared, declared)


def refusal(declared: str | None, data: str, accepted: frozenset[str]) -> str | None:
    """Why a vendor that takes `accepted` would refuse this inline image (the end of a sentence), or
    None. Bytes that are none of SNIFFED_TYPES are refused when labelled as one of them, or not at
    all: whatever they are, the vendor would be sent a type they do not match."""
    kind = sniffed_type(data)
    if kind is None:
        label = declared_type(declared)
        if label is None or label in SNIFFED_TYPES:
            said = f" (labelled {label})" if label else ""
            return f"and this one's bytes are not a PNG, JPEG, GIF or WebP image{said}"
        kind = label
    return None if kind in accepted else f"not {kind}"


def _head(data: str) -> bytes:
    """The first 12 bytes (16 base64 characters), in either alphabet; b"" when they do not decode."""
    try:
        return base64.b64decode(data[:16].replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return b""
