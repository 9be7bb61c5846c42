"""How a catalog file (HELYX_CATALOG) combines with the built-in catalog: `mode = "replace"` takes
the file alone; `extend` (the default) merges each model's and provider's fields over the
built-in ones, but a built-in provider pointed at another server (or made another kind) drops the
options that describe its vendor's server."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`: replace mode drops base; extend merges each table's fields."""
    if override.get("mode", "extend") == "replace":
        return override
    merged: dict[str, Any] = {"models": {}, "providers": {}}
    for section in ("models", "providers"):
        for name, fields in base.get(section, {}).items():
            merged[section][name] = dict(fields)
        for name, fields in override.get(section, {}).items():
            target = merged[section].setdefault(name, {})
            if section == "providers" and _another_server(fields, target):
                for option in _OF_THE_VENDOR:  # not known to hold for whatever now answers there
                    target.pop(option, None)
            target.update(fields)
    return merged


def _another_server(fields: dict[str, Any], built_in: dict[str, Any]) -> bool:
    """Whether a file's provider fields point the built-in one at another server: a new base_url,
    or another kind (another wire protocol, whose adapter would not even take the options)."""
    if "kind" in fields and fields["kind"] != built_in.get("kind"):
        return True
    return "base_url" in fields and not _same_server(fields["base_url"], built_in.get("base_url"))


def _same_server(url: Any, other: Any) -> bool:
    """The same base URL however it is written (a trailing slash, the host's case)."""
    def key(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        parts = urlsplit(value.strip())
        return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query
    return bool(key(url) == key(other))


# A built-in provider's options that describe its vendor's server, not the wire protocol: a file
# that points the provider at another server (a proxy, a local model server) starts without them
# unless it sets them again. `limit_field` above all: a server that ignores max_completion_tokens
# (Ollama and llama-cpp-python do) would produce without bound, and a charge stops at the hold;
# `extra_body` holds the vendor's own request fields (MiniMax's `reasoning_split`).
_OF_THE_VENDOR = ("limit_field", "extra_body")
