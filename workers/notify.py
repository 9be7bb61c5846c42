"""Webhook delivery for a finished job: signed (Standard Webhooks), retried with backoff (each try
a message of its own), guarded against SSRF. The job row records the outcome; a delivery never
changes the job or its money."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import text

from common import clock
from common.jobs.views import Linker, job_view, load_job
from common.ssrf import bounded_getaddrinfo, lookup_pending
from common.webhook_secrets import account_webhook_secret
from common.webhooks import delay_before_retry, deliver
from workers import context

log = logging.getLogger("helyx.webhooks")
Retry = Callable[..., Any]  # an actor's send_with_options


# A worker process delivers at most half as many webhooks at once as it has threads (one at least):
# a receiver that never answers holds a thread for a whole try, and a job canceled while queued
# costs its submitter nothing, so without a cap one account's webhooks could take every thread
# the media jobs need. And at most one per account: else one account's silent receivers took every
# slot, and another account's webhooks waited behind them (a free key submitting and canceling
# jobs, at no cost). A delivery that finds no free slot is sent again after SLOT_WAIT_MS.
SLOT_WAIT_MS = 1000
_slots: threading.BoundedSemaphore | None = None
_slots_lock = threading.Lock()
_accounts_delivering: set[str] = set()


def size_slots(worker_threads: int) -> None:
    """Size the slots from the threads this process really runs (Dramatiq's `--threads`, which
    `helyx worker --threads N` sets without touching HELYX_WORKER_THREADS): half of them, one at least."""
    global _slots
    with _slots_lock:
        _slots = threading.BoundedSemaphore(max(1, worker_threads // 2))


@contextlib.contextmanager
def delivery_slot() -> Iterator[bool]:
    """True (and the slot held for the block) when this process may deliver one more webhook now."""
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(max(1, context.settings().worker_threads // 2))
    got = _slots.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            _slots.release()


@contextlib.contextmanager
def account_slot(account_id: str) -> Iterator[bool]:
    """True (and the account's one slot held for the block) when none of its webhooks is under way
    in this process."""
    with _slots_lock:
        got = account_id not in _accounts_delivering
        _accounts_delivering.add(account_id)
    try:
        yield got
    finally:
        if got:
            with _slots_lock:
                _accounts_delivering.discard(account_id)


def send_webhook(job_id: str, attempt: int = 1, retry: Retry | None = None) -> None:
    """One try of the job's webhook. A failure a retry may mend is tried again by a new message
    `retry` sends after the backoff (with `attempt + 1`), not by sleeping here: a receiver that is
    down or slow holds a worker thread for one attempt's timeout at most, never for the whole
    series. Without `retry` (a caller that cannot schedule), the tries run here, back to back."""
    engine = context.engine()
    with engine.connect() as conn:
        row = conn.execute(text("SELECT account_id, webhook_url, webhook_status, status FROM jobs WHERE id = :id"),
                           {"id": job_id}).first()
    if row is None or not row.webhook_url or row.webhook_status in ("delivered", "failed"):
        return
    with account_slot(row.account_id) as free:
        # Later, the attempt not spent: another of the account's webhooks is under way here, or a
        # lookup of its that was given up still runs (this one's would fail at once: a series of
        # tries lasts less than a name server that never answers keeps a lookup).
        if retry is not None and (not free or lookup_pending(row.account_id)):
            retry(args=(job_id, attempt), delay=SLOT_WAIT_MS)
            return
        _try(job_id, row, attempt, retry)


def _try(job_id: str, row: Any, attempt: int, retry: Retry | None) -> None:
    engine = context.engine()
    settings = context.settings()
    with engine.begin() as conn:  # in hand (again): the sweeper leaves it alone while the tries go on
        conn.execute(text("UPDATE jobs SET webhook_status = 'pending', webhook_pending_at = :now"
                          " WHERE id = :id AND (webhook_status IS NULL OR webhook_status = 'pending')"),
                     {"id": job_id, "now": clock.now().timestamp()})
    record = load_job(engine, row.account_id, job_id)
    # No request here: without HELYX_PUBLIC_URL the links use the base the job was submitted to, as
    # the API's own answers do (a receiver cannot open a relative URL).
    base_url = settings.public_url or record.base_url or ""
    linker = Linker(base_url, context.signing_secret(), settings.signed_url_ttl_seconds)
    payload = {"type": f"job.{record.row['status']}", "data": job_view(record, linker)}
    result = deliver(
        row.webhook_url, payload, secret=account_webhook_secret(context.signing_secret(), row.account_id),
        allow_private=settings.webhook_allow_private, timeout=settings.webhook_timeout_seconds,
        max_attempts=1 if retry is not None else settings.webhook_max_attempts,
        backoff=settings.webhook_backoff_seconds, webhook_id=f"msg_{job_id}", earlier_attempts=attempt - 1,
        resolver=functools.partial(bounded_getaddrinfo, owner=row.account_id),  # one slow name server per account
    )
    if not result.ok and not result.final and retry is not None and attempt < settings.webhook_max_attempts:
        delay = delay_before_retry(settings.webhook_backoff_seconds, attempt, result.retry_after)
        retry(args=(job_id, attempt + 1), delay=int(delay * 1000))
        log.info("webhook for job %s: attempt %d failed (%s); again in %.1f s", job_id, attempt, result.error, delay)
        return
    status = "delivered" if result.ok else "failed"
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET webhook_status = :s WHERE id = :id"), {"s": status, "id": job_id})
    if result.ok:
        log.info("webhook for job %s: delivered after %d attempt(s)", job_id, attempt - 1 + result.attempts)
    else:  # why, for the operator (a refused address is named here, never to the client)
        log.info("webhook for job %s: failed after %d attempt(s): %s", job_id, attempt - 1 + result.attempts,
                 result.error)
