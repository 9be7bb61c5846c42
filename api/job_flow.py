"""Media job submission and reading, shared by /images, /videos and /jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api.deps import Caller, after_lookup
from api.errors import error_response, is_database_down
from api.services import Services
from common import billing, clock
from common.accounts import Principal
from common.errors import HelyxError, InsufficientCredits, InvalidRequest, JobAnswerFailed, JobUnconfirmed
from common.ids import new_id
from common.jobs import lifecycle
from common.jobs.files import remove_unrecorded
from common.jobs.submit import OutcomeUnknown, Submission, submit_job
from common.jobs.views import (
    JobRecord,
    Linker,
    as_written,
    list_jobs,
    load_job_and_balance,
    load_job_and_balance_async,
    poll_job_async,
)
from common.money import to_credits
from common.ssrf import WebhookHostUnresolved, check_url_in_time, check_url_shape

log = logging.getLogger("helyx.api")
TERMINAL = ("succeeded", "failed", "canceled")


def public_base(services: Services, request: Request) -> str:
    """The absolute base of our links: HELYX_PUBLIC_URL, else the host this request came to."""
    return services.settings.public_url or str(request.base_url).rstrip("/")


def linker(services: Services, request: Request) -> Linker:
    return Linker(public_base(services, request), services.signing_secret, services.settings.signed_url_ttl_seconds)


@contextlib.asynccontextmanager
async def counted(services: Services, principal: Principal) -> AsyncIterator[dict[str, str]]:
    """Count the request against the key's rate limit (429 when over it) and yield the
    `x-ratelimit-*` headers for the answer. A refusal raised inside the block carries them too
    (SPEC §2), as chat's do: the client still learns what the key has left."""
    rate_headers = (await services.limiter.hit(principal.key_id, principal.plan)).headers()
    try:
        yield rate_headers
    except HelyxError as exc:
        exc.headers = {**rate_headers, **exc.headers}
        raise


def check_request(services: Services, request: Request, webhook_url: str | None) -> None:
    """What a job request carries besides its body's fields, as far as it can be checked without
    I/O: its Idempotency-Key and its webhook URL's shape, refused with a 400 before the request is
    counted against the rate limit (as a body that fails validation is). The webhook host's name
    is looked up in `submit()`, once the request is counted: a lookup is work for the name
    servers, and its answer (private or public) something to ration."""
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key")
    if webhook_url:
        check_url_shape(webhook_url, services.settings.webhook_allow_private)


async def submit(
    services: Services, principal: Principal, request: Request, *, job_type: str, model: str,
    params: dict[str, Any], units: int, webhook_url: str | None,
) -> Submission:
    """Gate, reserve, write the job and enqueue it. Call `check_request()` first, and this inside
    `counted()`: the rate limit is counted there."""
    settings = services.settings
    fields = getattr(request.state, "log", None)  # the request's log line (api.observability)
    if fields is not None:
        fields["model"] = model  # a refusal (403, 402) names it too
    entry = services.catalog.resolve(model, principal.plan, settings, kind=job_type)
    if webhook_url:
        # Not in the thread pool every route shares: the user's name server may be slow on purpose
        # (a lookup thread of its own, given up after 2 s; one such at a time per account).
        with contextlib.suppress(WebhookHostUnresolved):  # may resolve later: checked before every delivery
            await check_url_in_time(webhook_url, settings.webhook_allow_private, owner=principal.account_id)
    idempotency_key = request.headers.get("idempotency-key")
    job_id = new_id("job")
    # The shutdown's cut while the job's statement runs in its thread (which goes on): the job may
    # be made, so not a 503 the SDK retries (api.middleware.answer_cut_request)
    request.state.answer_if_cut = lambda: error_response(JobUnconfirmed(
        job_id, job_type, "the server is shutting down and cut this request off", idempotent=bool(idempotency_key)))

    def submit_and_enqueue() -> Submission:
        """One trip to the thread pool: the job committed, then its message sent (off the event loop:
        a send to an unanswering Redis blocks until the broker's socket timeout)."""
        submission = submit_job(services.engine, principal, job_type=job_type, model=entry.id, params=params,
                                price=entry.rate_micro * units, tz=settings.timezone,
                                idempotency_key=idempotency_key, webhook_url=webhook_url,
                                base_url=public_base(services, request), job_id=job_id)
        if submission.created:
            try:
                services.enqueue(submission.job_id, job_type)
            except Exception:
                log.exception("enqueue of %s failed; the sweeper will retry it", submission.job_id)
        return submission

    try:
        submission = await run_in_threadpool(submit_and_enqueue)
    except InsufficientCredits as exc:
        if units > 1 and exc.param is None:  # fewer images may be affordable: the field to lower
            exc.param = "n"
        raise
    except OutcomeUnknown as exc:
        log.warning("job %s: the database did not confirm its submission (%s)", job_id, type(exc.__cause__).__name__)
        raise JobUnconfirmed(job_id, job_type, "the gateway's database did not confirm it",
                             idempotent=bool(idempotency_key)) from exc
    if fields is not None:  # and names the job it made
        fields.update(model=entry.id, job_id=submission.job_id, credits_reserved=to_credits(entry.rate_micro * units))
    return submission


async def first_reading(services: Services, principal: Principal, submission: Submission) -> tuple[JobRecord, int]:
    """The job as the submission's answer shows it: as its statement wrote it, when it returned
    that (a worker may have started it since: the answer says queued, as it was when made), else
    read."""
    if submission.row is not None:
        return as_written(submission.row)
    return await read(services, principal, submission.job_id)


@contextlib.asynccontextmanager
async def answering(request: Request, job_id: str, job_type: str) -> AsyncIterator[None]:
    """Around what follows a job's submission in the request that made it (reading it back,
    waiting for it, its files): from there on, a failure is a JobAnswerFailed that names the job
    and tells the SDK not to retry (x-should-retry: false), since a retry would be a second job;
    so is the shutdown's cut, unless the route leaves a better answer (the image route's 202).
    A refusal that is final already (a canceled or failed job's answer) passes as it is."""
    idempotent = bool(request.headers.get("idempotency-key"))  # a retry with it returns this job
    request.state.answer_if_cut = lambda: error_response(JobAnswerFailed(
        job_id, job_type, status=503, reason="the server is shutting down and cut this request off",
        idempotent=idempotent))
    try:
        yield
    except HelyxError as exc:
        if not exc.client_may_retry:
            raise
        raise JobAnswerFailed(job_id, job_type, status=exc.status, reason=exc.message.rstrip("."),
                              idempotent=idempotent) from exc
    except Exception as exc:
        if is_database_down(exc):
            log.warning("job %s: database unavailable while answering (%s)", job_id, type(exc).__name__)
            raise JobAnswerFailed(job_id, job_type, status=503, reason="the gateway's database is unavailable",
                                  idempotent=idempotent) from exc
        log.exception("job %s: answering failed", job_id)
        raise JobAnswerFailed(job_id, job_type, status=500, reason=f"internal error: {type(exc).__name__}",
                              idempotent=idempotent) from exc


async def cancel(services: Services, principal: Principal, job_id: str) -> bool:
    """Cancel the job (common.jobs.lifecycle.cancel: full refund; 404, or 409 once finished); True
    when this call canceled it. Files an earlier attempt stored and never recorded (cut off
    between the two) are removed then: a canceled job records none, and no row would lead the
    expiry sweep to them. An attempt still running finds its lease gone and deletes its own."""
    def cancel_and_clean() -> bool:
        if not lifecycle.cancel(services.engine, principal.account_id, job_id):
            return False
        remove_unrecorded(services.storage, principal.account_id, job_id)
        return True

    return await run_in_threadpool(cancel_and_clean)


async def page(services: Services, principal: Principal, **filters: Any) -> tuple[list[JobRecord], bool, int]:
    """A page of the account's jobs (common.jobs.views.list_jobs' `filters`), whether more follow,
    and the account's available credits, which each job's `helyx` shows, as a single job's does."""
    def read_page() -> tuple[list[JobRecord], bool, int]:
        records, has_more = list_jobs(services.engine, principal.account_id, **filters)
        return records, has_more, billing.available(services.engine, principal.account_id)

    return await run_in_threadpool(read_page)


async def read(services: Services, principal: Principal, job_id: str, job_type: str | None = None
               ) -> tuple[JobRecord, int]:
    """The job and the account's available credits (on the event loop with PostgreSQL)."""
    if services.pg is not None:
        return await load_job_and_balance_async(services.pg, principal.account_id, job_id, job_type)
    return await run_in_threadpool(load_job_and_balance, services.engine, principal.account_id, job_id, job_type)


async def read_as(caller: Caller, job_id: str, job_type: str | None = None) -> tuple[JobRecord, int]:
    """Authenticate and read the job (a poll's whole database work): on the event loop with
    PostgreSQL, else in one trip to the thread pool."""
    services = caller.services
    if services.pg is not None:
        now = clock.now().timestamp()
        principal, record, remaining = await poll_job_async(services.pg, caller.token, job_id, job_type, now=now)
        if await after_lookup(caller.request, services, principal, now):  # a daily reset: the balance moved
            return await load_job_and_balance_async(services.pg, principal.account_id, job_id, job_type)
        return record, remaining

    def work() -> tuple[JobRecord, int]:
        principal = caller.authenticate()
        return load_job_and_balance(services.engine, principal.account_id, job_id, job_type)

    return await run_in_threadpool(work)


async def wait_for(services: Services, principal: Principal, job_id: str, timeout: float,
                   seen: Callable[[JobRecord, int], None] | None = None) -> tuple[JobRecord, int]:
    """Poll the job row until it finishes or `timeout` passes (a short, growing interval); `seen`
    is told each reading. Through a database outage it reads again until the deadline, and then
    answers the last reading, if any (the job still running, as far as it knows)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    delay = 0.0
    last: tuple[JobRecord, int] | None = None
    while True:
        try:
            record, remaining = await read(services, principal, job_id)
        except Exception as exc:  # a database blip: the job runs on meanwhile; read again until the deadline
            if not is_database_down(exc) or loop.time() >= deadline:
                if last is not None and is_database_down(exc):
                    return last
                raise
            delay = next_poll_delay(delay, loop.time() - started)
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            continue
        if seen is not None:
            seen(record, remaining)
        last = record, remaining
        if record.row["status"] in TERMINAL or loop.time() >= deadline:
            return record, remaining
        delay = next_poll_delay(delay, loop.time() - started)
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))


def next_poll_delay(previous: float, waited: float) -> float:
    """5 ms, doubling to 100 ms; past two seconds, a twentieth of the time waited (at most 1 s).
    A fast job is seen within milliseconds, and a provider that takes a minute (each waiting
    request reading the job row) costs about 100 reads instead of 600, for at most 5 % more wait."""
    return min(max(0.005, previous * 2), 0.1) if waited < 2 else min(waited / 20, 1.0)


async def notify(services: Services, job_id: str) -> None:
    """Send a finished job's webhook (best effort: the workers' sweeper re-sends unsent ones)."""
    try:
        await run_in_threadpool(services.notify, job_id)
    except Exception:
        log.exception("webhook send for %s failed; the sweeper will retry it", job_id)
