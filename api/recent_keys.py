"""Keys this API process let in: their id and their plan, as of their last request
(api.chat_admission counts a chat request's rate with them before the key is looked up again).

Nothing here authenticates anything: the key is looked up in the database on every request all
the same, and a request of an unknown, revoked or expired key is refused. What is remembered
only lets the rate-limit hit go first; a stale plan costs at most one request counted under the
plan the key had a moment before.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_KEYS = 10_000  # per process; when full, the memory starts over


@dataclass(frozen=True, slots=True)
class RecentKey:
    account_id: str  # (for the log line of a request refused before the lookup)
    key_id: str
    plan: str


class RecentKeys:
    def __init__(self) -> None:
        self._keys: dict[str, RecentKey] = {}

    def get(self, key_hash: str) -> RecentKey | None:
        return self._keys.get(key_hash)

    def remember(self, key_hash: str, account_id: str, key_id: str, plan: str) -> None:
        known = self._keys.get(key_hash)
        if known is not None and known.key_id == key_id and known.plan == plan:
            return
        if len(self._keys) >= MAX_KEYS:
            self._keys.clear()
        self._keys[key_hash] = RecentKey(account_id, key_id, plan)

    def forget(self, key_hash: str) -> None:
        self._keys.pop(key_hash, None)
