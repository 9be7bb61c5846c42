"""Readiness checks: the database answers; the broker (Redis) answers when configured."""

from __future__ import annotations

from sqlalchemy import Engine, text

from common.db import probe
from common.settings import Settings


def check(settings: Settings, engine: Engine) -> dict[str, str]:
    results: dict[str, str] = {}
    try:
        with probe(engine).connect() as conn:  # a new connection on PostgreSQL: answers in seconds, or fails
            conn.execute(text("SELECT 1"))
        results["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a readiness probe reports, it does not raise
        results["database"] = f"error: {type(exc).__name__}"
    if settings.redis_url:
        import redis

        try:
            redis.Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1).ping()
            results["broker"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a readiness probe reports, it does not raise
            results["broker"] = f"error: {type(exc).__name__}"
    else:
        results["broker"] = "ok"  # in-process broker
    return results
