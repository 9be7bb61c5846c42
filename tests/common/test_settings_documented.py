"""Every setting is in the README's configuration table, under its environment variable's name."""

from __future__ import annotations

from pathlib import Path

from common.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
PLAN_SUFFIXES = ("_free", "_plus", "_pro", "_ultra")


def _documented_name(field: str) -> str:
    """The per-plan families share one row: `HELYX_RATE_LIMIT_FREE` / `_PLUS` / `_PRO` / `_ULTRA`."""
    for suffix in PLAN_SUFFIXES[1:]:
        if field.endswith(suffix):
            return f"`{suffix.upper()}`"
    return f"`HELYX_{field.upper()}`"


def test_every_setting_has_a_row_in_the_readme() -> None:
    table = [line for line in README.read_text("utf-8").splitlines() if line.startswith("| `HELYX_")]
    missing = [f for f in Settings.model_fields if not any(_documented_name(f) in row for row in table)]
    assert missing == []
