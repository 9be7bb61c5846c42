"""What a command that serves requests or runs jobs checks before it starts, so a bad catalog or an
unusable storage directory is one line on stderr and exit status 2: not a traceback from deep in
the app's import, nor a worker that boots fine and then fails every job."""

from __future__ import annotations

import tempfile

from common.catalog import Catalog, load_catalog
from common.settings import Settings, shown_url
from common.storage import LocalStorage


class StorageUnusable(Exception):
    """HELYX_STORAGE_DIR cannot be created or written to."""


def check(settings: Settings) -> Catalog:
    """The catalog. CatalogError for a catalog that does not load; StorageUnusable for a storage
    directory this process cannot write (result files are written there by the workers and read
    by the API)."""
    catalog = load_catalog(settings)
    try:
        root = LocalStorage(settings.storage_dir).root
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        reason = "a file is in the way: not a directory" if isinstance(exc, FileExistsError) else exc.strerror or exc
        raise StorageUnusable(f"HELYX_STORAGE_DIR {settings.storage_dir}: {reason}") from None
    return catalog


def redis_warning(settings: Settings) -> str | None:
    """A line for the operator when HELYX_REDIS_URL is set and Redis does not answer a PING within
    a second. Not a refusal to start (Redis may come up after the API): until it answers, the
    rate-limited routes answer 503, and the sweeper sends the jobs committed meanwhile once it answers."""
    if not settings.redis_url:
        return None
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        return (f"warning: Redis at {shown_url(settings.redis_url)} does not answer ({type(exc).__name__}: {exc}); "
                "rate-limited routes answer 503 and jobs wait until it does")
    finally:
        client.close()
    return None


def keyed_providers(catalog: Catalog, settings: Settings) -> list[str]:
    """The providers whose key is set, as "name (KEY_VARIABLE)": simulation leaves their models
    alone (SPEC §6: only a model without a key is simulated)."""
    return sorted({f"{p.name} ({p.api_key_env})" for p in catalog.providers.values()
                   if p.kind != "simulated" and settings.provider_secret(p.api_key_env) is not None})


def placeholder_warning(catalog: Catalog, settings: Settings) -> str | None:
    """A line for the operator when a provider key holds "..." (`sk-...` pasted from an example):
    it counts as a key, so its provider's models are real, not simulated, and every call fails."""
    names = sorted({p.api_key_env for p in catalog.providers.values() if p.kind != "simulated" and p.api_key_env
                    and "..." in (settings.provider_secret(p.api_key_env) or "")})
    if not names:
        return None
    return (f"warning: {', '.join(names)} look(s) like a placeholder (it holds '...'): a set key makes its "
            "provider's models real (not simulated), and their calls fail with it; unset it or give the real key")


def offline_warning(catalog: Catalog, settings: Settings) -> str | None:
    """A line for the operator when no provider has a key and nothing is simulated: every model
    would answer 404 model_offline, which a first production start gave without a word."""
    if settings.simulation_on or keyed_providers(catalog, settings) or any(
            catalog.provider_for(entry).kind == "simulated" for entry in catalog.models.values()):
        return None  # (a model on the simulated provider answers without any key)
    wanted = sorted({p.api_key_env for p in catalog.providers.values() if p.kind != "simulated" and p.api_key_env})
    return (f"warning: no provider has a key ({', '.join(wanted)}): every model is offline (404 model_offline) "
            "until one is set; HELYX_SIMULATE=1 simulates the models that have none")
