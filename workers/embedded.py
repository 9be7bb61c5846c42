"""The self-contained mode's workers: Dramatiq worker threads on the in-process StubBroker,
inside `helyx serve`. On start, whatever was queued or running when the process last stopped is
queued again, so nothing is lost across a restart."""

from __future__ import annotations

import logging
import time

import dramatiq

from common.jobs import recovery
from workers import context, execute, sweeper
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
    return worker


def stop(worker: dramatiq.Worker) -> None:
    """Let the running jobs finish, for up to the shutdown grace; what is cut off then (or was
    still queued) is resumed at the next start. A second Ctrl-C ends the wait at once."""
    grace = context.settings().shutdown_grace_seconds
    log.info("stopping: up to %g s for running jobs to finish", grace)
    started = time.monotonic()
    worker.stop(timeout=int(grace * 1000))
    log.info("workers stopped after %.1f s", time.monotonic() - started)
    execute.cut_off_at_shutdown()
