"""Readiness checks: the database answers; the broker (Redis) answers when configured."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, text

from common.db import READY_STATEMENT_MS, probe
from common.settings import Settings

# One database check at a time per process, its answer shared for RECENT_SECONDS: each opens a
# connection of its own (common.db.probe), and /readyz needs no key, so many clients at once
# would otherwise open as many (a queue of them waits for the one under way, then reads its answer).
_PROBING = threading.Lock()
RECENT_SECONDS = 1.0


def check(settings: Settings, engine: Engine) -> dict[str, str]:
    results: dict[str, str] = {"database": _database(engine)}
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


def _database(engine: Engine) -> str:
    with _PROBING:
        checked_at, answer = engine.__dict__.get("_helyx_ready", (float("-inf"), ""))
        if time.monotonic() - checked_at < RECENT_SECONDS:
            return answer  # type: ignore[no-any-return]
        try:
            with probe(engine, READY_STATEMENT_MS).connect() as conn:  # new on PostgreSQL: seconds, or fails
                conn.execute(text("SELECT 1"))
            answer = "ok"
        except Exception as exc:  # noqa: BLE001 - a readiness probe reports, it does not raise
            answer = f"error: {type(exc).__name__}"
        engine.__dict__["_helyx_ready"] = (time.monotonic(), answer)
        return answer
