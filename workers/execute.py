"""Running one media job: claim the row, call the provider under a time limit while renewing the
lease, store the files, then settle (success) or refund (final failure) — exactly once.

Retries are counted in the row: a transient provider error (connection, 429, 5xx) puts the job
back in the queue with exponential backoff until `job_max_retries`; a permanent error or the time
limit fails it at once with a full refund. A job whose lease we lost (canceled meanwhile, or
reclaimed after we stalled) is abandoned without touching money: its new owner, or the cancel,
has already decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from common import billing
from common.errors import UpstreamError
from common.ids import new_id
from common.jobs import files as job_files
from common.jobs import lifecycle
from common.jobs.lifecycle import AccountBusy, AttemptsExhausted, ClaimedJob
from common.providers.base import ImageRequest, MediaFile, VideoRequest
from common.providers.registry import Providers
from common.retrying import DATABASE_DOWN, while_database_down
from workers import context, runtime
from workers.runtime import ThreadRuntime, catalog

log = logging.getLogger("helyx.worker")
BUSY_RETRY_MS = 1000
# Claims a job may have beyond its retries of provider errors before a dead worker's lapsed lease
# fails it (worker_lost): enough for restarts and deploys that cut a job short, few enough that a
# job that kills its worker every time (out of memory, a native crash) stops being retried.
LOST_WORKER_ATTEMPTS = 3
# The jobs this process is running now, (id, lease owner) -> type: one job can run twice in a
# process (an attempt whose lease lapsed while it stalled, and the one that reclaimed it).
RUNNING: dict[tuple[str, str], str] = {}
_RUNNING_LOCK = threading.Lock()
PROGRESS_SECONDS = 1.0  # a job's progress reaches its row at most this often (with the lease renewal)
# A result that will not store is tried again with the media in hand, never by calling the
# provider again (a paid call); then the job fails with a refund.
STORE_TRIES = 3
STORE_BACKOFF_SECONDS = 0.5
STORAGE_FAILED = "storage_failed"
Requeue = Callable[..., Any]
Notify = Callable[[str], Any]


class LeaseLost(Exception):
    """The job is no longer ours: stop without touching it."""


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


def run_job(job_id: str, *, requeue: Requeue, notify: Notify) -> None:
    settings = context.settings()
    engine = context.engine()
    owner = _owner()
    try:
        job = lifecycle.claim(engine, job_id, owner, settings.job_lease_seconds, settings.running_jobs_for,
                              max_attempts=settings.job_max_retries + 1 + LOST_WORKER_ATTEMPTS)
    except AccountBusy:
        requeue(args=(job_id,), delay=BUSY_RETRY_MS)
        return
    except AttemptsExhausted as exhausted:
        log.warning("job transition", extra={"job_id": job_id, "account_id": exhausted.account_id, "to": "failed",
                                             "error_code": exhausted.code})
        _remove_unrecorded(exhausted.account_id, job_id, keep=[])
        if exhausted.webhook_url:
            notify(job_id)
        return
    if job is None:
        return  # finished, canceled, or running under a live lease elsewhere
    if job.id != job_id:  # an older job of the account took the slot: this one waits, its message sent again
        try:
            requeue(args=(job_id,), delay=0)
        except Exception as exc:  # noqa: BLE001 - the older job runs all the same; the sweeper sends this one
            log.warning("job %s waits for a slot, its message not sent again (%s); the sweeper sends it",
                        job_id, type(exc).__name__)
    with _running(job, owner):
        _run_claimed(job, owner, requeue, notify)


@contextlib.contextmanager
def _running(job: ClaimedJob, owner: str) -> Iterator[None]:
    with _RUNNING_LOCK:
        RUNNING[job.id, owner] = job.type
    try:
        yield
    finally:
        with _RUNNING_LOCK:
            RUNNING.pop((job.id, owner), None)


def cut_off_at_shutdown(enqueue: Callable[[str, str], object] | None = None) -> None:
    """Once the workers have stopped: the jobs the grace cut off are queued again at once, their
    attempt given back (a stop the operator chose is no failure of the job's), and sent with
    `enqueue` when given (`helyx worker`: another worker, or this one restarted, takes them now;
    the self-contained `helyx serve` resumes them at its next start).
    Left `running`, each waited for its lease to lapse, counting against its account's running cap
    meanwhile. Each runs again and is charged once. A row the database does not let us write now
    is reclaimed after its lease, as a dead worker's."""
    with _RUNNING_LOCK:
        cut = sorted(RUNNING.items())
    if not cut:
        return
    log.warning("shutdown: %d running job(s) cut off at the end of the grace: %s",
                len(cut), ", ".join(job_id for (job_id, _), _ in cut))
    queued: list[str] = []
    for (job_id, owner), job_type in cut:
        try:
            if not lifecycle.give_back(context.engine(), job_id, owner):
                continue  # no longer ours: it finished, was canceled or was reclaimed meanwhile
        except DATABASE_DOWN as exc:
            log.warning("job %s stays running until its lease lapses (%s)", job_id, type(exc).__name__)
            continue
        queued.append(job_id)
        log.warning("job transition", extra={"job_id": job_id, "type": job_type, "to": "queued",
                                             "reason": "server_shutdown"})
        if enqueue is not None:
            try:
                enqueue(job_id, job_type)
            except Exception as exc:  # noqa: BLE001 - the broker is going away too: the sweeper sends it
                log.warning("job %s queued again, not sent (%s); the sweeper sends it", job_id, type(exc).__name__)
    if queued:
        log.warning("shutdown: queued again, to run once more and be charged once: %s", ", ".join(queued))


def _run_claimed(job: ClaimedJob, owner: str, requeue: Requeue, notify: Notify) -> None:
    settings = context.settings()
    engine = context.engine()
    _transition(job, "running", owner=owner)
    try:
        media = runtime.current().run(lambda rt: _produce(job, owner, rt))
    except LeaseLost:
        _abandoned(job, "while producing")
        return
    except UpstreamError as exc:
        _failed(job, owner, exc, requeue, notify)
        return
    except Exception as exc:
        log.exception("job %s crashed", job.id)
        _failed(job, owner, UpstreamError(f"Internal error: {type(exc).__name__}", retryable=True,
                                          code="internal_error"), requeue, notify)
        return
    try:
        files = _store_with_retries(job, owner, media)
    except LeaseLost:
        _abandoned(job, "while storing")
        return
    except Exception as exc:  # noqa: BLE001 - any storage error; not an interrupt (Dramatiq's time limit)
        _failed(job, owner, UpstreamError(f"The result could not be stored ({type(exc).__name__}); the job was "
                                          "refunded in full.", retryable=False, code=STORAGE_FAILED),
                requeue, notify)
        return
    def succeed() -> bool:  # the billing day as of each try: retries through an outage may cross midnight
        return lifecycle.succeed(engine, job, owner, files, settings.results_ttl_days * 86400,
                                 billing.today(settings.timezone))

    try:
        won = while_database_down(succeed) or lifecycle.has_result(engine, job.id, [f["id"] for f in files])
    except DATABASE_DOWN:
        raise  # committed or not, nobody can tell: the files stay (a commit would name them)
    except Exception:  # not an interrupt (Dramatiq's time limit) that could land after the commit
        _delete(files)  # the transaction rolled back: nothing names them
        raise
    if won:  # (has_result: committed before a lost reply)
        _transition(job, "succeeded", files=len(files))
        _remove_orphans(job, keep=[f["storage_key"] for f in files])
        if job.webhook_url:
            notify(job.id)
    else:
        _delete(files)
        _abandoned(job, "when its result came; the result is discarded")


def _delete(files: list[dict[str, Any]]) -> None:
    for f in files:
        context.storage().delete(f["storage_key"])


def _remove_orphans(job: ClaimedJob, keep: list[str]) -> None:
    """Once a job has its outcome, files an earlier attempt stored and never recorded (its worker
    was killed, or cut off by a shutdown, between storing and committing) are removed: no row
    names them, so the expiry sweep, which works from rows, would never find them. No other attempt
    can record files now. Looked for after every success (a listing of the job's own directory):
    an attempt cut off by a shutdown gives its count back (lifecycle.give_back), so the attempts
    cannot tell a first run from a second."""
    _remove_unrecorded(job.account_id, job.id, keep)


def _remove_unrecorded(account_id: str, job_id: str, keep: list[str]) -> None:
    job_files.remove_unrecorded(context.storage(), account_id, job_id, keep)


def _transition(job: ClaimedJob, to: str, level: int | None = None, **fields: Any) -> None:
    """One structured log line per job state change."""
    if level is None:
        level = logging.WARNING if to in ("failed", "abandoned") else logging.INFO
    log.log(level, "job transition", extra={"job_id": job.id, "account_id": job.account_id, "type": job.type,
                                            "model": job.model, "attempt": job.attempts, "to": to, **fields})


def _abandoned(job: ClaimedJob, when: str) -> None:
    """The attempt found the job no longer its own (`when`). Its owner canceled it: an ordinary
    event, at INFO (every cancel of a running job logged a WARNING, a README walkthrough found).
    Else another worker took it over after this attempt's lease lapsed, or it ended meanwhile: a
    WARNING."""
    try:
        now = lifecycle.status(context.engine(), job.id)
    except Exception:  # noqa: BLE001 - only the line's level and words depend on it: logged as unknown
        now = None
    if now == "canceled":
        _transition(job, "abandoned", logging.INFO, reason=f"canceled by its owner; noticed {when}")
    else:
        _transition(job, "abandoned", reason=f"no longer this attempt's ({now or 'status unknown'}); noticed {when}")


def _failed(job: ClaimedJob, owner: str, exc: UpstreamError, requeue: Requeue, notify: Notify) -> None:
    settings = context.settings()
    engine = context.engine()
    timed_out = exc.code == "job_time_limit"
    if exc.retryable and not timed_out and job.attempts <= settings.job_max_retries:
        if while_database_down(lifecycle.requeue, engine, job.id, owner, exc.code, exc.message):
            delay = settings.job_retry_backoff_ms * 2 ** (job.attempts - 1)
            _transition(job, "queued", error_code=exc.code, retry_in_ms=delay)
            requeue(args=(job.id,), delay=delay)
        return
    if while_database_down(lifecycle.fail, engine, job, owner, exc.code, exc.message):
        _transition(job, "failed", error_code=exc.code, error=exc.message)
        # a failed job keeps no file: whatever is under it was stored and never recorded, by an earlier
        # attempt or by this one's store that failed part-way (a rare path: the look costs nothing that matters)
        _remove_unrecorded(job.account_id, job.id, keep=[])
        if job.webhook_url:
            notify(job.id)


async def _produce(job: ClaimedJob, owner: str, runtime: ThreadRuntime) -> list[MediaFile]:
    """Call the provider with a time limit, renewing the lease (and progress) meanwhile."""
    settings = runtime.settings
    limit = settings.image_job_time_limit if job.type == "image" else settings.video_job_time_limit
    progress = {"value": 0}
    providers = runtime.providers()
    entry = catalog(settings).get(job.model)
    work = asyncio.create_task(_call(providers, entry, job, progress))
    heartbeat = asyncio.create_task(_heartbeat(job.id, owner, progress, work))
    try:
        return await asyncio.wait_for(work, timeout=limit)
    except TimeoutError:
        raise UpstreamError(f"The job exceeded its time limit of {limit:g} s.", code="job_time_limit") from None
    except asyncio.CancelledError:
        raise LeaseLost(job.id) from None
    finally:
        heartbeat.cancel()


async def _call(providers: Providers, entry: Any, job: ClaimedJob, progress: dict[str, int]) -> list[MediaFile]:
    p = job.params
    if job.type == "image":
        request = ImageRequest(entry.upstream_model, p["prompt"], p["width"], p["height"], p.get("n", 1))
        images = await providers.image(entry).generate_images(request)
        if len(images) < request.n:  # the price is per image asked for: never charge for fewer
            raise UpstreamError(f"The provider returned {len(images)} image(s) of the {request.n} asked for.",
                                retryable=True, code="upstream_bad_response")
        return images[:request.n]
    video = VideoRequest(entry.upstream_model, p["prompt"], int(p["seconds"]), p["width"], p["height"])
    return [await providers.video(entry).generate_video(video, lambda v: progress.__setitem__("value", v))]


async def _heartbeat(job_id: str, owner: str, progress: dict[str, int], work: asyncio.Task[Any]) -> None:
    """Renew the lease every quarter of it, and sooner (at most once a second) when the progress
    moved, so a poller sees it move; stop the work once the job is no longer ours. A renewal that
    fails because the database is unreachable (a restart) is tried again at the next beat: the
    lease still runs meanwhile, so an outage shorter than it costs the job nothing."""
    lease = context.settings().job_lease_seconds
    beat = min(lease / 4, PROGRESS_SECONDS)
    written, renewed = 0, time.monotonic()
    while True:
        await asyncio.sleep(beat)
        if progress["value"] == written and time.monotonic() - renewed < lease / 4:
            continue
        try:
            alive = await asyncio.to_thread(lifecycle.renew, context.engine(), job_id, owner, lease,
                                            progress["value"])
        except DATABASE_DOWN as exc:
            log.warning("lease renewal of %s failed (%s); retrying", job_id, type(exc).__name__)
            continue
        if not alive:
            work.cancel()
            return
        written, renewed = progress["value"], time.monotonic()


def _store_with_retries(job: ClaimedJob, owner: str, media: list[MediaFile]) -> list[dict[str, Any]]:
    """The heartbeat stopped with the provider call: before each try again the lease is renewed,
    and LeaseLost once the job is no longer ours (canceled, or reclaimed by a sweeper, which would
    pay the provider again if the lease lapsed while we were still trying)."""
    for attempt in range(1, STORE_TRIES):
        try:
            return _store(job, media)
        except Exception as exc:  # noqa: BLE001 - whatever the storage raised; the last try's error is kept
            log.warning("job %s: storing its result failed (try %d of %d): %s", job.id, attempt, STORE_TRIES, exc)
            time.sleep(STORE_BACKOFF_SECONDS * attempt)
            _renew_or_stop(job, owner)
    return _store(job, media)


def _renew_or_stop(job: ClaimedJob, owner: str) -> None:
    try:
        alive = lifecycle.renew(context.engine(), job.id, owner, context.settings().job_lease_seconds)
    except DATABASE_DOWN:
        return  # its lease still runs: try the store again meanwhile
    if not alive:
        raise LeaseLost(job.id)


def _store(job: ClaimedJob, media: list[MediaFile]) -> list[dict[str, Any]]:
    """Each file under its own new id: an attempt that loses the job deletes what it stored, and
    must never hit the files of the attempt that won (a stalled worker whose lease was reclaimed).
    A store that fails part-way deletes what it stored before raising."""
    files: list[dict[str, Any]] = []
    try:
        for item in media:
            file_id = new_id("file")
            key = job_files.file_key(job.account_id, job.id, file_id, _extension(item.content_type))
            size = context.storage().put(key, item.data, item.content_type)
            files.append({"id": file_id, "storage_key": key, "content_type": item.content_type, "bytes": size})
    except Exception:
        with contextlib.suppress(OSError):
            _delete(files)
        raise
    return files


def _extension(content_type: str) -> str:
    return {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "video/mp4": ".mp4"}.get(
        content_type, ".bin")
