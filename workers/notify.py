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
from common.webhooks import DeliveryResult, delay_before_retry, deliver
from workers import context
from workers.sweeper import longest_delivery

log = logging.getLogger("helyx.webhooks")
Retry = Callable[..., Any]  # an actor's send_with_options


# A worker process delivers at most half as many webhooks at once as it has threads (one at least):
# a receiver that never answers holds a thread for a whole try, and a job canceled while queued
# costs its submitter nothing, so without a cap one account's webhooks could take every thread
# the media jobs need. And at most one per account: else one account's silent receivers took every
# slot, and another account's webhooks waited behind them (a free key submitting and canceling
# jobs, at no cost). A delivery that finds no free slot is sent again later (slot_wait_ms).
SLOT_WAIT_MS = 1000  # the first wait for a slot, doubled at each wait after it
SLOT_WAIT_MAX_MS = 30_000
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


def slot_wait_ms(waited: int) -> int:
    """How long a delivery that found no free slot, `waited` times before, waits before it looks
    again: a second, doubling up to 30 s. At a fixed second, an account's pile of webhooks to a
    receiver that never answers (canceled jobs cost nothing) cost each process a look per webhook
    every second, ~3 ms of CPU each, a pile that grew by every job it submitted (a security review)."""
    return min(SLOT_WAIT_MS * 2 ** min(waited, 16), SLOT_WAIT_MAX_MS)


def send_webhook(job_id: str, attempt: int = 1, retry: Retry | None = None, waited: int = 0) -> None:
    """One try of the job's webhook. A failure a retry may mend is tried again by a new message
    `retry` sends after the backoff (with `attempt + 1`), not by sleeping here: a receiver that is
    down or slow holds a worker thread for one attempt's timeout at most, never for the whole
    series. Without `retry` (a caller that cannot schedule), the tries run here, back to back.
    `waited`: how many times this delivery found no free slot before (slot_wait_ms)."""
    engine = context.engine()
    with engine.connect() as conn:
        row = conn.execute(text("SELECT account_id, webhook_url, webhook_status, webhook_pending_at, status"
                                " FROM jobs WHERE id = :id"), {"id": job_id}).first()
    if row is None or not row.webhook_url or row.webhook_status in ("delivered", "failed"):
        return
    with account_slot(row.account_id) as free:
        # Later, the attempt not spent: another of the account's webhooks is under way here, or a
        # lookup of its that was given up still runs (this one's would fail at once: a series of
        # tries lasts less than a name server that never answers keeps a lookup).
        if retry is not None and (not free or lookup_pending(row.account_id)):
            wait_for_a_slot(job_id, attempt, waited, retry, row)
            return
        _try(job_id, row, attempt, retry)


def wait_for_a_slot(job_id: str, attempt: int, waited: int, retry: Retry, row: Any = None) -> None:
    """Sent again after slot_wait_ms, the row marked in hand (pending, with the time) as a try
    marks it, and marked again before the mark is old enough for the sweeper to take the message
    for lost: a webhook that waited for a slot longer than a minute used to get a second message
    from the sweeper, and one more at every sweep after (`row`: the job's webhook columns, if read)."""
    keep_in_hand(job_id, row)
    retry(args=(job_id, attempt, waited + 1), delay=slot_wait_ms(waited))


def keep_in_hand(job_id: str, row: Any = None) -> None:
    """The row marked pending, with the time, unless its mark is recent: one more wait (at most
    30 s) must not take it past the sweeper's limit for a delivery in hand (longest_delivery)."""
    now = clock.now().timestamp()
    marked_at = row.webhook_pending_at if row is not None and row.webhook_status == "pending" else None
    if marked_at is not None and now - marked_at < longest_delivery(context.settings()) - 2 * SLOT_WAIT_MAX_MS / 1000:
        return
    with context.engine().begin() as conn:
        conn.execute(text("UPDATE jobs SET webhook_status = 'pending', webhook_pending_at = :now"
                          " WHERE id = :id AND (webhook_status IS NULL OR webhook_status = 'pending')"),
                     {"id": job_id, "now": now})


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
    try:
        result = deliver(
            row.webhook_url, payload, secret=account_webhook_secret(context.signing_secret(), row.account_id),
            allow_private=settings.webhook_allow_private, timeout=settings.webhook_timeout_seconds,
            max_attempts=1 if retry is not None else settings.webhook_max_attempts,
            backoff=settings.webhook_backoff_seconds, webhook_id=f"msg_{job_id}", earlier_attempts=attempt - 1,
            resolver=functools.partial(bounded_getaddrinfo, owner=row.account_id),  # one slow name server per account
        )
    except Exception as exc:  # a fault of ours (deliver reports a receiver's): a failed try, counted as one
        log.exception("webhook for job %s: attempt %d raised", job_id, attempt)
        # (raised, its row stayed pending, and the sweeper sent it again for ever, past every limit)
        result = DeliveryResult(False, 1, None, f"internal error: {type(exc).__name__}", f"msg_{job_id}")
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
