"""The self-contained mode's workers: Dramatiq worker threads on the in-process StubBroker,
inside `helyx serve`. On start, whatever was queued or running when the process last stopped is
queued again, so nothing is lost across a restart."""

from __future__ import annotations

import atexit
import logging

import dramatiq

from common.jobs import recovery
from workers import context, sweeper
from workers.actors import deliver_webhook, enqueue
from workers.broker import broker

log = logging.getLogger("helyx.worker")


def start() -> dramatiq.Worker:
    settings = context.settings()
    pending = recovery.requeue_all_unfinished(context.engine())
    for job_id in pending:
        enqueue(job_id, sweeper._job_type(job_id))
    if pending:
        log.warning("resuming %d unfinished job(s) from the last run", len(pending))
    worker = dramatiq.Worker(broker, worker_threads=settings.worker_threads, worker_timeout=100)
    worker.start()
    sweeper.start(enqueue, deliver_webhook.send)
    atexit.register(worker.stop, timeout=int(settings.shutdown_grace_seconds * 1000))
    return worker
