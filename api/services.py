"""What the API process builds once and hands to routes: settings, engine, clients, catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from common.pg_async import AsyncStatements
from common.settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    extras: dict[str, Any] = field(default_factory=dict)
    pg: AsyncStatements | None = None  # PostgreSQL on the event loop, while the app runs (its lifespan)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.extras[name]
        except KeyError:
            raise AttributeError(name) from None
