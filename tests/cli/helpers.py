"""What the `helyx` command tests share: a command's JSON output, and the tables a refused command
must leave as they were."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, text

TABLES = ("accounts", "api_keys", "ledger_entries", "holds")


def ok_json(result: tuple[int, str, str]) -> dict[str, Any]:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1"))] for t in TABLES}
