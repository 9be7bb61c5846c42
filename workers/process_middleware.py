"""What each `helyx worker` process does as Dramatiq boots and stops it: hold the database's jobs
lock shared (so that no self-contained `helyx serve` takes up these workers' jobs,
common.jobs_lock), size the webhook slots from the threads it really runs, start the sweeper, and
give back the jobs a stop cut off. Apart from workers.boot, which registers it, so that importing
it (a test) registers nothing and configures nothing."""

from __future__ import annotations

import logging
import sys
from typing import Any

import dramatiq

from common import jobs_lock
from common.gc_tuning import freeze_startup_heap
from common.settings import get_settings
from workers import execute, notify, sweeper
from workers.actors import deliver_webhook, enqueue

log = logging.getLogger("helyx.worker")
_jobs_lock: list[Any] = []  # the connection that holds it, kept for the process's life


def hold_jobs_lock() -> None:
    """On PostgreSQL; a worker process that cannot have it stops (a self-contained serve runs
    this database's jobs, or the database cannot be reached as the process boots), and the
    supervisor starts the workers again after its backoff."""
    settings = get_settings()
    if settings.is_sqlite:
        return
    try:
        _jobs_lock.append(jobs_lock.hold(settings.database_url, shared=True, holder="helyx worker"))
    except jobs_lock.JobsTaken as exc:
        log.error("a self-contained helyx serve is running the jobs of this database (%s); this worker "
                  "takes none until it stops", exc)
        sys.exit(3)
    except Exception as exc:  # noqa: BLE001 - Dramatiq would log it and boot the worker without the lock
        log.error("this worker cannot take the jobs lock (%s: %s); it takes no jobs without it, and is "
                  "started again after the supervisor's backoff", type(exc).__name__, exc)
        sys.exit(3)


class SweeperMiddleware(dramatiq.Middleware):
    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        hold_jobs_lock()
        notify.size_slots(worker.worker_threads)  # the real thread count, not HELYX_WORKER_THREADS
        freeze_startup_heap()  # everything is imported and no worker thread has started yet

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        sweeper.start(enqueue, deliver_webhook.send)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        execute.cut_off_at_shutdown(enqueue)
