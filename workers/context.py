"""What an actor needs, built once per process from the settings: engine, storage, secret.

Tests point it at their own settings with `configure()`; worker processes use the environment.
A worker opens its own connection per message (the engine's pool), never shares one across
threads.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import Engine

from common.db import get_engine
from common.settings import Settings, get_settings
from common.signing import load_or_create_secret
from common.storage import LocalStorage, Storage

_configured: Settings | None = None


def configure(settings: Settings | None) -> None:
    global _configured
    _configured = settings
    storage.cache_clear()
    signing_secret.cache_clear()


def settings() -> Settings:
    return _configured or get_settings()


def engine() -> Engine:
    return get_engine(settings().database_url)


@cache
def storage() -> Storage:
    return LocalStorage(settings().storage_dir)


@cache
def signing_secret() -> bytes:
    configured = settings().secret_key
    return load_or_create_secret(configured.get_secret_value() if configured else None, settings().storage_dir)
