"""How a catalog file (HELYX_CATALOG) combines with the built-in catalog: `mode = "replace"` takes
the file alone; `extend` (the default) merges each model's and provider's fields over the
built-in ones, but a built-in provider pointed at another server drops the options that describe
its vendor's server, and one made another kind drops every option of its own."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from common.catalog_options import PROVIDER_FIELDS


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
            if section == "providers":
                for option in _dropped(fields, target):  # not known to hold for whatever now answers there
                    target.pop(option, None)
            target.update(fields)
    return merged


def _dropped(fields: dict[str, Any], built_in: dict[str, Any]) -> tuple[str, ...]:
    """The built-in provider's options a file's fields for it leave out: made another kind (another
    wire protocol, whose adapter would not even take them), all of them; pointed at another server
    (a new base_url), those that describe its vendor's server."""
    if "kind" in fields and fields["kind"] != built_in.get("kind"):
        return tuple(option for option in built_in if option not in PROVIDER_FIELDS)
    if "base_url" in fields and not _same_server(fields["base_url"], built_in.get("base_url")):
        return _OF_THE_VENDOR
    return ()


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
