"""Plans: their order and daily allowance (SPEC §3)."""

from __future__ import annotations

from common.money import MICRO

PLANS: tuple[str, ...] = ("free", "plus", "pro", "ultra")
DAILY_ALLOWANCE_CREDITS: dict[str, int] = {"free": 1_000, "plus": 5_000, "pro": 10_000, "ultra": 25_000}


def daily_allowance_micro(plan: str) -> int:
    return DAILY_ALLOWANCE_CREDITS[plan] * MICRO


def plan_rank(plan: str) -> int:
    return PLANS.index(plan)


def plan_allows(plan: str, min_plan: str) -> bool:
    """True when `plan` is `min_plan` or higher."""
    return plan_rank(plan) >= plan_rank(min_plan)


def is_plan(value: str) -> bool:
    return value in PLANS
