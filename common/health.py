"""Readiness checks: the database answers; the broker (Redis) answers when configured."""

from __future__ import annotations

from sqlalchemy import Engine, text

from common.db import READY_STATEMENT_MS, probe
from common.settings import Settings
from common.shared_reading import SharedReading

# One database check at a time per engine, its answer shared for RECENT_SECONDS (common.shared_reading):
# each opens a connection of its own (common.db.probe), and /readyz needs no key.
RECENT_SECONDS = 1.0


def check(settings: Settings, engine: Engine) -> dict[str, str]:
    results: dict[str, str] = {"database": _database(engine)}
    if settings.redis_url:
        import redis

        try:
            with redis.Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1) as client:
                client.ping()  # (closed at once, not when collected)
            results["broker"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a readiness probe reports, it does not raise
            results["broker"] = f"error: {type(exc).__name__}"
    else:
        results["broker"] = "ok"  # in-process broker
    return results


def _database(engine: Engine) -> str:
    shared: SharedReading[str] = engine.__dict__.setdefault("_helyx_ready", SharedReading())
    return shared.get(lambda: _check_database(engine), RECENT_SECONDS)


def _check_database(engine: Engine) -> str:
    try:
        with probe(engine, READY_STATEMENT_MS).connect() as conn:  # new on PostgreSQL: seconds, or fails
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # noqa: BLE001 - a readiness probe reports, it does not raise
        return f"error: {type(exc).__name__}"
