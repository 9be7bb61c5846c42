"""bench/soak.py's accounts: made through the admin API, funded so that some run dry and some never do."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import httpx

PLANS = ("free", "plus", "pro", "ultra", "free")


@dataclass
class Account:
    index: int
    id: str
    key: str
    plan: str
    grant: int  # credits

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


BIG_WEIGHT = 4  # a funded account gets this many times the traffic of one meant to run dry


def funding(i: int, big_grant: int) -> int:
    """Half the accounts are well funded, a quarter get a small grant (they cross from the
    allowance into the top-up, then run dry), a quarter none (they run dry on the allowance)."""
    return (big_grant, big_grant, 2_000, 0)[i % 4]


def default_big_grant(args: argparse.Namespace) -> int:
    """Enough that a well-funded account never runs dry: ~200 credits a request were spent in
    practice (videos dominate), so 400 a request for its share of the traffic."""
    weights = [BIG_WEIGHT if i % 4 < 2 else 1 for i in range(args.accounts)]
    share = BIG_WEIGHT / sum(weights)
    return max(10_000, int(args.rate * args.seconds * share * 400) // 1000 * 1000)


def create_accounts(base: str, admin_token: str, count: int, big_grant: int) -> list[Account]:
    made = []
    auth = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30, trust_env=False) as client:
        for i in range(count):
            plan = PLANS[i % len(PLANS)]
            r = client.post("/admin/accounts", json={"email": f"soak{i}@soak.local", "plan": plan})
            r.raise_for_status()
            grant = funding(i, big_grant)
            if grant:
                client.post(f"/admin/accounts/{r.json()['account_id']}/credits",
                            json={"amount": grant, "reference": f"soak-{i}"}).raise_for_status()
            made.append(Account(i, r.json()["account_id"], r.json()["api_key"], plan, grant))
    return made

