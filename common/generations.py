"""Reading chat generation records."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from common.db import reader
from common.errors import NotFound
from common.money import to_credits


def get_generation(engine: Engine, account_id: str, generation_id: str) -> dict[str, Any]:
    """One generation of this account; another account's is 404, never 403."""
    with reader(engine).connect() as conn:
        row = conn.execute(
            text("SELECT id, model, key_id, stream, status, prompt_tokens, completion_tokens, usage_estimated,"
                 " credits, latency_ms, error_code, created_at FROM generations WHERE id = :id AND account_id = :aid"),
            {"id": generation_id, "aid": account_id},
        ).mappings().first()
    if row is None:
        raise NotFound(f"No generation {generation_id}", code="generation_not_found", param="id")
    return {
        "id": row["id"], "object": "generation", "model": row["model"], "key_id": row["key_id"],
        "stream": bool(row["stream"]), "status": row["status"],
        "usage": {"prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
                  "total_tokens": row["prompt_tokens"] + row["completion_tokens"],
                  "estimated": bool(row["usage_estimated"])},
        "credits_charged": to_credits(row["credits"]), "latency_ms": row["latency_ms"],
        "error_code": row["error_code"], "created_at": row["created_at"],
    }
