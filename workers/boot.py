"""Imported by each `helyx worker` process (Dramatiq's worker processes, not its main one):
makes a repeated stop signal harmless, starts the sweeper once the process boots, and names
the jobs a stop cut off."""

from __future__ import annotations

import dramatiq

from common import logs
from common.gc_tuning import freeze_startup_heap
from common.settings import get_settings
from workers import execute, stop_once, sweeper
from workers.actors import deliver_webhook, enqueue
from workers.broker import broker


class SweeperMiddleware(dramatiq.Middleware):
    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        freeze_startup_heap()  # everything is imported and no worker thread has started yet

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        sweeper.start(enqueue, deliver_webhook.send)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        execute.cut_off_at_shutdown()


logs.configure(get_settings().log_level)
stop_once.ignore_repeated_stops()
broker.add_middleware(SweeperMiddleware())
