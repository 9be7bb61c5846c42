"""Submitting a media job: reserve the flat charge and write the job row in ONE transaction.

The row is the truth. The broker message (sent after commit) only says "look at job X"; if the
send is lost, the sweeper re-enqueues queued jobs that nobody picked up (common.jobs.recovery),
so there is no window in which a committed job is never run.

Idempotency: (account, Idempotency-Key) is unique. The same key with the same body within 24 h
returns the first job (charged once); a different body is 409. Two concurrent submissions with
one key race on the unique constraint: the loser's transaction, hold included, rolls back and it
returns the winner's job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from common import billing, clock, credit_refusals, ledger, ledger_pg, pg_statements
from common.accounts import Principal
from common.db import is_postgres, reader
from common.errors import Conflict, InsufficientCredits
from common.ids import new_id
from common.retrying import is_unreachable

IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
# Keys of the stored params JSON that are ours, not the user's: never shown (JobRecord.params) and
# never part of the Idempotency-Key body comparison.
PRIVATE_PARAM_PREFIX = "_"
BASE_URL_PARAM = "_base_url"  # the absolute base the job was submitted to: its webhook's links
JOB_HOLD_TTL_SECONDS = 7 * 24 * 3600  # a job's hold is resolved by the job; this is a last resort

_INSERT_JOB = text(
    "INSERT INTO jobs (id, account_id, key_id, type, model, params, status, progress, attempts, hold_id, price,"
    " charged, idempotency_key, request_hash, webhook_url, created_at, enqueued_at)"
    " VALUES (:id, :aid, :kid, :type, :model, :params, 'queued', 0, 0, :hold, :price, 0, :idem, :hash, :hook,"
    " :now, :now)"
)


# A job row's columns as every read of it names them (common.jobs.views). Named, not `*`: the reads
# run as server-side prepared statements (psycopg prepares a repeated query), and PostgreSQL
# refuses a prepared `SELECT *` once a migration adds a column ("cached plan must not change
# result type"), until the process restarts.
JOB_COLUMNS = (
    "id, account_id, key_id, type, model, params, status, progress, attempts, lease_owner, lease_until, hold_id,"
    " price, charged, error_code, error_message, result, idempotency_key, request_hash, webhook_url,"
    " webhook_status, webhook_pending_at, created_at, enqueued_at, started_at, finished_at, expires_at"
)
AVAILABLE_COLUMN = "account_available"  # the account's available credits, beside a job row read with them

# The same row, written in the reservation's own statement on PostgreSQL (common.ledger_pg), and
# returned as it was written, with the credits the account has left once it is held: what the
# submission's answer shows, without a read after it.
_INSERT_JOB_FROM_HOLD = (
    "INSERT INTO jobs (id, account_id, key_id, type, model, params, status, progress, attempts, hold_id, price,"
    " charged, idempotency_key, request_hash, webhook_url, created_at, enqueued_at)"
    " SELECT %(job_id)s, %(aid)s, %(kid)s, %(job_type)s, %(job_model)s, %(job_params)s, 'queued', 0, 0, h.id,"
    " %(amt)s, 0, %(job_idem)s, %(job_hash)s, %(job_hook)s, %(now)s, %(now)s FROM h"
    f" RETURNING {JOB_COLUMNS}, (SELECT available FROM a) AS {AVAILABLE_COLUMN}"
)


class OutcomeUnknown(Exception):
    """The database went away while the job's statement (or its commit) was in flight on
    PostgreSQL: the job may have been made, or not. Nothing was sent when the connection could
    not be had: that stays the database's own error (a retry makes nothing twice)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


@dataclass(frozen=True, slots=True)
class Submission:
    job_id: str
    created: bool  # False when an idempotent replay returned an earlier job
    # The job row as its statement wrote it, with AVAILABLE_COLUMN (PostgreSQL, an uncapped key);
    # None when it must be read (SQLite, a capped key, a replay).
    row: dict[str, Any] | None = None


def request_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def submit_job(
    engine: Engine, principal: Principal, *, job_type: str, model: str, params: dict[str, Any], price: int,
    tz: str, idempotency_key: str | None = None, webhook_url: str | None = None, base_url: str | None = None,
    job_id: str | None = None,
) -> Submission:
    """Reserve and write the job (or return the earlier one for this Idempotency-Key). `base_url`,
    the absolute URL the request came to, is kept in the stored params (`BASE_URL_PARAM`) for the
    webhook's file links; it is not part of the body compared for the Idempotency-Key."""
    body_hash = request_hash({"type": job_type, "model": model, "params": params, "webhook_url": webhook_url})
    stored = json.dumps({**params, BASE_URL_PARAM: base_url} if base_url else params)
    if idempotency_key:
        replay = _replay(engine, principal.account_id, idempotency_key, body_hash)
        if replay:
            return replay
    job_id = job_id or new_id("job")
    now = clock.now().timestamp()
    written: dict[str, Any] | None = None
    try:
        if is_postgres(engine) and principal.daily_cap is None:
            written = _reserve_and_insert_in_one_statement(engine, principal, price, job_id, now, tz, {
                "job_id": job_id, "job_type": job_type, "job_model": model, "job_params": stored,
                "job_idem": idempotency_key, "job_hash": body_hash, "job_hook": webhook_url,
            })
        else:
            with engine.connect() as conn:  # a connection that cannot be had: nothing was sent
                transaction = conn.begin()  # a failure before the COMMIT rolls it all back: the error as it is
                hold_id = _reserve(conn, principal, price, job_id, now, tz)
                conn.execute(_INSERT_JOB, {
                    "id": job_id, "aid": principal.account_id, "kid": principal.key_id, "type": job_type,
                    "model": model, "params": stored, "hold": hold_id, "price": price,
                    "idem": idempotency_key, "hash": body_hash, "hook": webhook_url, "now": now,
                })
                try:
                    transaction.commit()
                except (OperationalError, InterfaceError) as exc:  # SQLite's failed commit rolled back
                    if is_postgres(engine) and is_unreachable(exc):
                        raise OutcomeUnknown(job_id) from exc
                    raise
    except (IntegrityError, psycopg.IntegrityError, InsufficientCredits):
        # A concurrent duplicate of this key committed first: its unique key refuses ours, or its
        # hold took what ours needed (the balance covered one); either way the answer is its job
        # (or a 409 for a different body), as a replay after it would have.
        if not idempotency_key:
            raise
        replay = _replay(engine, principal.account_id, idempotency_key, body_hash)
        if replay is None:
            raise
        return replay
    return Submission(job_id, created=True, row=written)


def _reserve(conn: Connection, principal: Principal, price: int, job_id: str, now: float, tz: str) -> str:
    try:
        return ledger.reserve(
            conn, account_id=principal.account_id, key_id=principal.key_id, amount=price, purpose=f"job:{job_id}",
            now=now, ttl=JOB_HOLD_TTL_SECONDS,
            cap_day=billing.today(tz) if principal.daily_cap is not None else None,
        )
    except InsufficientCredits as exc:
        raise billing.with_reset_time(exc, tz) from None


def _reserve_and_insert_in_one_statement(
    engine: Engine, principal: Principal, price: int, job_id: str, now: float, tz: str, job: dict[str, Any],
) -> dict[str, Any]:
    """The hold, its ledger entry and the job row in one autocommit statement (PostgreSQL,
    uncapped keys): nothing is written unless all of it is. The row as written, with
    AVAILABLE_COLUMN."""
    try:
        with pg_statements.connection(engine) as pg:  # one that cannot be had is SQLAlchemy's error: nothing sent
            made = ledger_pg.reserve_and_insert(
                pg, account_id=principal.account_id, key_id=principal.key_id, amount=price, purpose=f"job:{job_id}",
                now=now, ttl=JOB_HOLD_TTL_SECONDS, insert=_INSERT_JOB_FROM_HOLD, insert_params=job)
    except pg_statements.UNREACHABLE as exc:
        if is_unreachable(exc):  # the statement sent, its reply lost: it may have committed
            raise OutcomeUnknown(job_id) from exc
        raise  # refused by a reachable server (a lock or statement timeout, a deadlock): nothing written
    if made is None:
        with reader(engine).connect() as conn:
            refusal = credit_refusals.insufficient_error(ledger.balance(conn, principal.account_id), price)
        raise billing.with_reset_time(refusal, tz)
    return made


def _replay(engine: Engine, account_id: str, key: str, body_hash: str) -> Submission | None:
    """The earlier job for this key, a 409 for a different body, or None (and an expired key
    released for reuse)."""
    now = clock.now().timestamp()
    with engine.begin() as conn:
        row = conn.execute(
            text("SELECT id, request_hash, created_at FROM jobs WHERE account_id = :aid AND idempotency_key = :k"),
            {"aid": account_id, "k": key},
        ).first()
        if row is None:
            return None
        if now - row.created_at > IDEMPOTENCY_WINDOW_SECONDS:
            conn.execute(text("UPDATE jobs SET idempotency_key = NULL WHERE id = :id"), {"id": row.id})
            return None
    if row.request_hash != body_hash:
        raise Conflict("This Idempotency-Key was already used with a different request body.",
                       code="idempotency_key_reused")
    return Submission(row.id, created=False)
