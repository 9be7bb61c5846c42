"""The self-contained mode's workers: Dramatiq worker threads on the in-process StubBroker,
inside `helyx serve`. On start, whatever was queued or running when the process last stopped is
queued again, so nothing is lost across a restart."""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import dramatiq

from common import billing
from common.jobs import recovery
from workers import context, execute, sweeper
from workers.actors import deliver_webhook, enqueue
from workers.broker import broker
from workers.notify import send_webhook

log = logging.getLogger("helyx.worker")
# At a stop, for the webhooks of jobs that finished during the grace (their messages are queued in
# this process only): one try each, within this long (plus one try's timeout at most).
LEFT_WEBHOOKS_SECONDS = 5.0


def start() -> dramatiq.Worker:
    settings = context.settings()
    billing.release_chat_holds_of_a_past_run(context.engine())
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
    try:
        worker.stop(timeout=int(grace * 1000))
    except KeyboardInterrupt:  # as the grace's end would: the jobs still running are given back, below
        log.warning("stopping at once (a second Ctrl-C) after %.1f s", time.monotonic() - started)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a third must not cut the give-back short
        try:
            execute.cut_off_at_shutdown()
        finally:
            signal.signal(signal.SIGINT, previous)
        return  # the webhooks left are the sweeper's, after the next start
    log.info("workers stopped after %.1f s", time.monotonic() - started)
    execute.cut_off_at_shutdown()
    deliver_left_webhooks(LEFT_WEBHOOKS_SECONDS)


def deliver_left_webhooks(seconds: float) -> int:
    """The webhooks of jobs that finished while the workers stopped: their messages were queued
    in this process only, and Dramatiq's in-process broker drops what its stopped workers had not
    taken. Found from the rows instead (finished, never sent), one try each, for up to `seconds`.
    One left untried stays unsent, for the sweeper a minute after the next start; one whose try
    failed is pending, for the sweeper once a whole delivery's time has passed. Returns how many
    were tried; a database that is down now leaves them all to the sweeper."""
    deadline, tried = time.monotonic() + seconds, 0
    try:
        engine = context.engine()
        left = recovery.unsent_webhooks(engine, 0.0, sweeper.longest_delivery(context.settings()), take=False)
    except Exception as exc:  # noqa: BLE001 - a clean stop all the same
        log.warning("webhooks left unsent at the stop: not looked for (%s); the sweeper sends them", type(exc).__name__)
        return 0
    for job_id in left:
        if time.monotonic() >= deadline:
            break
        tried += 1
        try:
            send_webhook(job_id, retry=_leave_to_the_sweeper)  # marks it pending as it tries
        except Exception as exc:  # noqa: BLE001 - the row says what is left: the sweeper's, after the next start
            log.warning("webhook for job %s not sent at the stop (%s)", job_id, type(exc).__name__)
    return tried


def _leave_to_the_sweeper(**_: Any) -> None:
    """A failed try at a stop is not scheduled again here: its row stays pending for the sweeper."""
