"""Imported by each `helyx worker` process: starts the sweeper once the process boots."""

from __future__ import annotations

import dramatiq

from workers import sweeper
from workers.actors import enqueue
from workers.broker import broker


class SweeperMiddleware(dramatiq.Middleware):
    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        sweeper.start(enqueue)


broker.add_middleware(SweeperMiddleware())
