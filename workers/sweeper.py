"""The sweeper: a daemon thread in every process that runs workers. Every few seconds it
re-enqueues queued jobs whose message may have been lost, jobs whose worker died (lease expired),
releases expired holds and deletes expired result files. All of it is idempotent, so several
processes sweeping at once is harmless."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import text

from common import billing, clock, webhooks
from common.jobs import recovery
from common.retrying import is_unreachable
from common.settings import Settings
from workers import context

log = logging.getLogger("helyx.sweeper")
FILE_SWEEP_EVERY = 12  # sweeps
WEBHOOK_GRACE_SECONDS = 60.0  # a finished job's own webhook send normally happens at once


class SentRecently:
    """The dead workers' jobs this process sent again, by (job id, attempt). A job is sent once, and
    again only if it is still unclaimed `every` seconds later (its message may be lost, as a stale
    queued job's may): while every worker is busy, each sweep used to add one more copy of its
    message and one more warning line. A new claim is a new attempt, so a job whose next worker
    dies too is sent again at once."""

    def __init__(self) -> None:
        self._sent: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def due(self, dead: list[tuple[str, int]], now: float, every: float) -> list[tuple[str, int]]:
        """The dead jobs not sent in the last `every` seconds (what is older is forgotten: due again
        if still dead, else gone)."""
        with self._lock:
            self._sent = {job: at for job, at in self._sent.items() if now - at < every}
            return [job for job in dead if job not in self._sent]

    def sent(self, job: tuple[str, int], now: float) -> None:
        """Marked once its message went out: a send that failed is tried again at the next sweep."""
        with self._lock:
            self._sent[job] = now

    def remembered(self) -> int:
        with self._lock:
            return len(self._sent)


RESENT = SentRecently()


def longest_delivery(settings: Settings) -> float:
    """The longest one webhook delivery can last (every attempt to its timeout, every backoff), and
    a minute: a send taken in hand longer ago than that never ended, and is sent again."""
    attempts = settings.webhook_max_attempts
    waits = sum(min(settings.webhook_backoff_seconds * 2 ** (i - 1), webhooks.MAX_DELAY_SECONDS)
                for i in range(1, attempts))
    return attempts * settings.webhook_timeout_seconds + waits + 60.0


def sweep_once(enqueue: Callable[[str, str], None], sweep_files: bool = True,
               notify: Callable[[str], object] | None = None) -> dict[str, int]:
    engine = context.engine()
    settings = context.settings()
    lost = recovery.stale_queued(engine, settings.stale_queued_seconds)
    now = clock.now().timestamp()
    expired = recovery.expired_leases(engine)
    dead = RESENT.due(list(expired), now, settings.stale_queued_seconds)
    if dead:
        log.warning("reclaiming %d job(s) whose worker stopped renewing its lease", len(dead))
    for job in dead:
        log.warning("job lease lapsed: sent again", extra={"job_id": job[0], "type": expired[job]})
        enqueue(job[0], expired[job])
        RESENT.sent(job, now)
    for job_id in lost:
        enqueue(job_id, _job_type(job_id))
    unsent: list[str] = []
    if notify is not None:
        unsent = recovery.unsent_webhooks(engine, WEBHOOK_GRACE_SECONDS, longest_delivery(settings))
        for job_id in unsent:
            notify(job_id)
    released = billing.expire_holds(engine)
    removed = _sweep_files() if sweep_files else 0
    return {"requeued": len(lost), "reclaimed": len(dead), "holds_released": released, "files_removed": removed,
            "webhooks_resent": len(unsent)}


def _job_type(job_id: str) -> str:
    with context.engine().connect() as conn:
        return str(conn.execute(text("SELECT type FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one())


def _sweep_files() -> int:
    expired = recovery.expired_files(context.engine())
    for _, key in expired:
        context.storage().delete(key)
    recovery.forget_files(context.engine(), [file_id for file_id, _ in expired])
    return len(expired)


def start(enqueue: Callable[[str, str], None], notify: Callable[[str], object] | None = None) -> threading.Thread:
    interval = context.settings().sweep_interval_seconds

    def loop() -> None:
        count = 0
        while True:
            try:
                sweep_once(enqueue, sweep_files=count % FILE_SWEEP_EVERY == 0, notify=notify)
            except Exception as exc:
                if not is_unreachable(exc):
                    log.exception("sweep failed")
                else:  # one line, not a traceback every few seconds, while the outage lasts
                    log.warning("sweep skipped: the database is unavailable (%s)", type(exc).__name__)
            count += 1
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="helyx-sweeper", daemon=True)
    thread.start()
    return thread
