"""A job's state changes. Each is one conditional UPDATE on the job row, so a lost, repeated or
late message can neither run a job twice at once nor settle it twice:

    queued ──claim──▶ running ──succeed──▶ succeeded   (hold settled at the price)
      ▲                 │ ├────fail──────▶ failed      (hold released: full refund)
      └──requeue────────┘ └──(lease lost)─ another worker reclaims after the lease expires
    queued/running ──cancel──▶ canceled                (hold released: full refund)

A running job holds a lease (`lease_owner`, `lease_until`) that its worker renews; a worker
that died stops renewing and the sweeper hands the job back to the queue. Every transition out
of `running` requires the caller to still own the lease, and the money moves in the same
transaction as the state. On PostgreSQL every transition that moves money locks the account row
before the job row (one lock order, no deadlocks); a claim, which moves none, takes the account's
claim lock (a transaction-level advisory lock) before the job row instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Engine, text

from common import clock, ledger, ledger_pg, pg_statements
from common.db import is_postgres
from common.errors import Conflict, NotFound
from common.jobs import lifecycle_pg
from common.jobs.transition_sql import (
    CLAIM,
    CLAIM_LOCK,
    CLAIM_OLDEST_UNDER_CAP,
    CLAIM_UNDER_CAP,
    CURRENT,
    INSERT_FILE,
    LOCK_ACCOUNT,
    OWNED,
    PIPELINED,
    RUNNABLE,
    SUCCEED,
    SUCCEED_WITH_FILES,
    WAIT_FOR_SLOT,
)
from common.plans import PLANS

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("helyx.worker")

class AccountBusy(Exception):
    """The account already runs as many jobs as its plan allows: the job stays queued."""


class AttemptsExhausted(Exception):
    """The job was failed at its claim instead of being run: it used all its attempts without an
    outcome (its workers died running it; refunded in full), or its reservation had lapsed."""

    def __init__(self, job_id: str, account_id: str, webhook_url: str | None, code: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.account_id = account_id
        self.webhook_url = webhook_url
        self.code = code


WORKER_LOST = "worker_lost"
RESERVATION_EXPIRED = "reservation_expired"


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: str
    account_id: str
    type: str
    model: str
    params: dict[str, Any]
    attempts: int
    hold_id: str
    price: int
    webhook_url: str | None = None


def claim(engine: Engine, job_id: str, owner: str, lease_seconds: float,
          running_cap: int | Callable[[str], int | None] | None, max_attempts: int | None = None) -> ClaimedJob | None:
    """Take the job for `owner`, or None if it is not runnable (gone, done, canceled, leased by a
    live worker). `running_cap` is the account's cap on running jobs, or a function of its plan.
    AccountBusy when the account already runs that many: the job is then queued with
    `enqueued_at` now, since the caller sends its message again (otherwise the sweeper would take
    a waiting job for lost, or for a dead worker's, and add a message copy on every sweep).

    Under a cap, the account's oldest job of the same type waiting for a slot for its first run is
    claimed in this one's place, if there is one: the returned job is then that one, and this one waits
    queued, its `enqueued_at` now, for the caller to send its message again.

    A job that already had `max_attempts` claims is not run again: only a worker that died
    running it (a lapsed lease, or a restart of the self-contained mode) leaves a job runnable
    with its attempts used up, and a job that kills its worker every time (out of memory, a
    crash in a native library) would otherwise be reclaimed forever, its hold open. It is failed
    with a full refund instead (AttemptsExhausted).

    The statements: BEGIN, the account's claim lock (which serializes one account's claims), the
    job with its account's plan, the claim itself with the running count as its condition (each a
    statement begun after the lock's wait, so it counts what committed meanwhile), the wait for a
    slot when the cap refused it or an older job took its place, COMMIT. On PostgreSQL they go in
    one round trip (common.jobs.lifecycle_pg, the decisions made in SQL), which leaves what is
    rare (a job no longer runnable, used-up attempts, a lapsed hold) to the general path below,
    one round trip each."""
    now = clock.now().timestamp()
    params = {"id": job_id, "owner": owner, "until": now + lease_seconds, "now": now}
    if is_postgres(engine):  # the common case in one round trip (common.jobs.lifecycle_pg)
        caps = {plan: running_cap(plan) if callable(running_cap) else running_cap for plan in PLANS}
        with pg_statements.connection(engine) as pg:
            fast = lifecycle_pg.claim(pg, PIPELINED, params, caps, max_attempts)
        if fast is not None:
            row, busy_account = fast
            if row is None:
                raise AccountBusy(busy_account)
            return _claimed(row)
    busy: str | None = None
    claimed_id = job_id
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(CLAIM_LOCK, {"id": job_id})
        current = conn.execute(CURRENT, {"id": job_id}).first()
        if current is None:  # the API wrote it to another database: this worker is mis-pointed
            log.warning("a message for job %s, which this worker's database does not have: is HELYX_DATABASE_URL "
                        "the API's? (a worker on another database that shares the API's Redis takes its jobs' "
                        "messages and drops them)", job_id)
            return None
        if not (current.status == "queued" or (current.status == "running"
                                                                   and current.lease_until < now)):
            return None
        # A hold that is no longer open lapsed (a job queued for longer than its hold's 7 days): run
        # now, the job would be free, its charge having nothing to come out of. Failed instead.
        lapsed = current.hold_status not in ("open", None)
        exhausted = lapsed or (max_attempts is not None and current.attempts >= max_attempts)
        cap = None if exhausted else running_cap(current.plan) if callable(running_cap) else running_cap
        if exhausted:
            row = None
        elif cap is None:
            row = conn.execute(CLAIM, params).first()
        else:
            capped = {**params, "aid": current.account_id, "cap": cap}
            if current.status == "queued" and current.attempts == 0:
                row = conn.execute(CLAIM_OLDEST_UNDER_CAP,
                                   {**capped, "type": current.type, "created": current.created_at}).first()
            else:
                row = conn.execute(CLAIM_UNDER_CAP, capped).first()
            claimed_id = row.id if row is not None else job_id
            if row is None and conn.execute(WAIT_FOR_SLOT, capped).rowcount == 1:
                busy = current.account_id
            elif row is not None and claimed_id != job_id:
                conn.execute(WAIT_FOR_SLOT, capped)  # queued as it was: its message is sent again
    if busy is not None:
        raise AccountBusy(busy)
    if exhausted:
        _fail_exhausted(engine, job_id, current.account_id, current.attempts, lapsed=lapsed)
    if row is None:
        return None
    return _claimed(row)


def _claimed(row: Any) -> ClaimedJob:
    return ClaimedJob(row.id, row.account_id, row.type, row.model, json.loads(row.params), row.attempts,
                      row.hold_id, row.price, row.webhook_url)


def _fail_exhausted(engine: Engine, job_id: str, account_id: str, attempts: int, *, lapsed: bool = False) -> None:
    """Fail a runnable job whose attempts are used up, with a full refund, or whose hold lapsed (it
    was released at its expiry: nothing is held, nothing charged); AttemptsExhausted when this call
    did it (nothing when a cancel or another worker's sweep came first)."""
    now = clock.now().timestamp()
    code, message = (RESERVATION_EXPIRED, "The job waited longer than its reservation lasts (7 days); it was not "
                     "run, and nothing was charged.") if lapsed else (
        WORKER_LOST, f"The job's worker stopped while running it, {attempts} time(s) (it crashed or was killed); "
                     "the job was not run again and was refunded in full.")
    with engine.begin() as conn:
        _lock_account(conn, account_id, job_id)
        row = conn.execute(
            text("UPDATE jobs SET status = 'failed', finished_at = :now, error_code = :code, error_message = :msg,"
                 f" lease_owner = NULL, lease_until = NULL WHERE id = :id AND {RUNNABLE} AND attempts = :attempts"
                 " RETURNING hold_id, webhook_url"),
            {"id": job_id, "now": now, "code": code, "msg": message, "attempts": attempts},
        ).first()
        if row is None:
            return
        ledger.release(conn, row.hold_id, now=now)  # a no-op for a lapsed hold (released at its expiry)
    raise AttemptsExhausted(job_id, account_id, row.webhook_url, code)


def _lock_account(conn: Connection, account_id: str, job_id: str | None = None) -> None:
    """Lock the account row before the job row (PostgreSQL; SQLite's BEGIN IMMEDIATE already
    serializes), the one lock order of every transition that moves money (succeed, fail, cancel),
    so two of them on one account's jobs queue up instead of deadlocking. (A claim takes the
    account's claim lock instead, which nothing holding a job row waits for.)"""
    if conn.dialect.name == "postgresql":
        if job_id is not None:  # a refund gives the key's daily cap back: the ledger's order is key, then account
            conn.execute(text("SELECT 1 FROM api_keys WHERE id = (SELECT key_id FROM jobs WHERE id = :jid"
                              " AND account_id = :aid) FOR UPDATE"),  # (another account's job: no lock of its key)
                         {"jid": job_id, "aid": account_id})
        conn.execute(LOCK_ACCOUNT, {"aid": account_id})


def renew(engine: Engine, job_id: str, owner: str, lease_seconds: float, progress: int | None = None) -> bool:
    """Extend the lease (and record progress, never lower than recorded: a retried attempt starts
    its provider at 0 again); False when the job is no longer ours (canceled, or reclaimed after
    our lease lapsed): the worker must then stop."""
    now = clock.now().timestamp()
    sets = "lease_until = :until" + (
        ", progress = CASE WHEN progress > :progress THEN progress ELSE :progress END" if progress is not None else "")
    with engine.begin() as conn:
        updated = conn.execute(text(f"UPDATE jobs SET {sets} WHERE {OWNED}"),
                               {"id": job_id, "owner": owner, "until": now + lease_seconds,
                                "progress": progress}).rowcount
    return updated == 1


def succeed(engine: Engine, job: ClaimedJob, owner: str, files: list[dict[str, Any]], ttl_seconds: float,
            day: str | None = None) -> bool:
    """Record the result files and settle the price, once. False when the job was no longer ours
    (nothing is written then; the caller removes the files it stored). On PostgreSQL: BEGIN, the
    settlement (common.ledger_pg, the account row locked first), the job row with its files,
    COMMIT, in one round trip (common.jobs.lifecycle_pg) unless the settlement needs the general
    ledger. `day`, today's billing day, makes the charge come out of today's allowance
    (ledger.settle)."""
    now = clock.now().timestamp()
    values = {"id": job.id, "owner": owner, "now": now, "exp": now + ttl_seconds, "aid": job.account_id,
              "result": json.dumps([f["id"] for f in files]), "files": json.dumps(files)}
    if files and is_postgres(engine):  # the common case in one round trip (common.jobs.lifecycle_pg)
        with pg_statements.connection(engine) as pg:
            done = lifecycle_pg.succeed(pg, PIPELINED, values, len(files), job.hold_id, job.price,
                                        _description(job), day)
        if done is not None:
            return done
    with engine.begin() as conn:
        _lock_account(conn, job.account_id)
        if files and conn.dialect.name == "postgresql":  # inserted only if the job row was still ours
            written = conn.execute(SUCCEED_WITH_FILES, values).rowcount == len(files)
        else:
            written = conn.execute(SUCCEED, values).rowcount == 1
            for f in files if written else []:
                conn.execute(INSERT_FILE, {**values, "fid": f["id"], "key": f["storage_key"],
                                           "ctype": f["content_type"], "bytes": f["bytes"]})
        if not written:
            return False  # nothing was written
        settlement = _settle(conn, job, now, day)
        if settlement.charged != job.price:  # the hold had lapsed (a job queued for days): record the truth
            conn.execute(text("UPDATE jobs SET charged = :c WHERE id = :id"), {"c": settlement.charged, "id": job.id})
    return True


def _settle(conn: Connection, job: ClaimedJob, now: float, day: str | None) -> ledger.Settlement:
    description = _description(job)
    if conn.dialect.name == "postgresql":  # one statement, unless capped, resolved, or yesterday's allowance
        # cast: SQLAlchemy types driver_connection Optional (None once invalidated); this
        # connection is checked out and live, and on PostgreSQL its driver is psycopg.
        driver = cast("psycopg.Connection", conn.connection.driver_connection)
        done = ledger_pg.resolve(driver, job.hold_id, job.price, now=now, description=description, day=day)
        if done is not None:
            return done
    return ledger.settle(conn, job.hold_id, job.price, now=now, description=description, day=day)


def _description(job: ClaimedJob) -> str:
    return f"{job.type} {job.model} job {job.id}"


def has_result(engine: Engine, job_id: str, file_ids: list[str]) -> bool:
    """True when the job succeeded with exactly these files (our own earlier commit)."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, result FROM jobs WHERE id = :id"), {"id": job_id}).first()
    return row is not None and row.status == "succeeded" and json.loads(row.result or "[]") == file_ids


def status(engine: Engine, job_id: str) -> str | None:
    """The job's status now (None: no such job)."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar()


def requeue(engine: Engine, job_id: str, owner: str, error_code: str, message: str) -> bool:
    """Give a job back to the queue after a transient failure (attempts keeps counting)."""
    now = clock.now().timestamp()
    with engine.begin() as conn:
        return conn.execute(
            text(f"UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, enqueued_at = :now,"
                 f" error_code = :code, error_message = :msg WHERE {OWNED}"),
            {"id": job_id, "owner": owner, "now": now, "code": error_code, "msg": message[:1000]},
        ).rowcount == 1


def give_back(engine: Engine, job_id: str, owner: str) -> bool:
    """Queue again a job its worker stopped running at a shutdown; False when it was no longer ours
    (it finished, was canceled, or was reclaimed meanwhile). The attempt its claim counted is
    taken back: a stop the operator chose (a deploy, a restart) is no failure of the job's, and the
    attempts a job may make include only three for workers that died under it (after seven
    restarts a job failed as `worker_lost`, "crashed or killed")."""
    now = clock.now().timestamp()
    with engine.begin() as conn:
        return conn.execute(
            text(f"UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, enqueued_at = :now,"
                 f" attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END WHERE {OWNED}"),
            {"id": job_id, "owner": owner, "now": now},
        ).rowcount == 1


def fail(engine: Engine, job: ClaimedJob, owner: str, error_code: str, message: str) -> bool:
    """Final failure: status failed and a full refund, once."""
    now = clock.now().timestamp()
    with engine.begin() as conn:
        _lock_account(conn, job.account_id, job.id)
        updated = conn.execute(
            text(f"UPDATE jobs SET status = 'failed', finished_at = :now, error_code = :code, error_message = :msg,"
                 f" lease_owner = NULL, lease_until = NULL WHERE {OWNED}"),
            {"id": job.id, "owner": owner, "now": now, "code": error_code, "msg": message[:1000]},
        ).rowcount
        if updated != 1:
            return False  # nothing was written
        ledger.release(conn, job.hold_id, now=now)
    return True


def cancel(engine: Engine, account_id: str, job_id: str) -> bool:
    """Cancel a job that has not finished: full refund. A running job's worker notices at its next
    lease renewal and stops; its late result is discarded. Finished jobs: 409. True when this call
    canceled it; False for one canceled before (nothing more to do: no refund, no webhook)."""
    now = clock.now().timestamp()
    with engine.begin() as conn:
        _lock_account(conn, account_id, job_id)
        row = conn.execute(
            text("UPDATE jobs SET status = 'canceled', finished_at = :now, error_code = 'canceled',"
                 " error_message = 'Canceled by the user.', lease_owner = NULL, lease_until = NULL"
                 " WHERE id = :id AND account_id = :aid AND status IN ('queued', 'running') RETURNING hold_id"),
            {"id": job_id, "aid": account_id, "now": now},
        ).first()
        if row is not None:
            ledger.release(conn, row.hold_id, now=now)
            return True
        status = conn.execute(text("SELECT status FROM jobs WHERE id = :id AND account_id = :aid"),
                              {"id": job_id, "aid": account_id}).scalar()
    if status is None:
        raise NotFound(f"No job {job_id}", code="job_not_found", param="id")
    if status != "canceled":
        raise Conflict(f"Job {job_id} has already finished ({status}).", code="job_finished")
    return False
