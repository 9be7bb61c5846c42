"""The two transitions every job makes on PostgreSQL, a claim and a success, in one round trip each.

Through SQLAlchemy a claim was five round trips (BEGIN, the account's claim lock, the job, the
claim, COMMIT) and a success five (BEGIN, the account lock, the job row with its files, the
settlement, COMMIT), each statement waiting for the answer to the one before, with the lock (on
which all of one account's claims, or its successes, queue) held across all but the first.
Here the same statements run on an autocommit psycopg connection (common.pg_statements), each
transaction, COMMIT included, sent as one Query message of prepared statements (common.pg_batch;
psycopg's pipeline mode, which did the same, cost the client two to three times the CPU), and the client
skips SQLAlchemy's per-statement work (bench.transitions: against the general path, a third of the
client CPU per job and twice the jobs per second on one account). Neither waits for an answer
before its COMMIT: what the general path decides in Python on what it reads, they decide in SQL
(common.jobs.transition_sql), so the locks they take (the account's claim lock, the account row)
are held for the server's time alone. A claim's decisions read the job in one statement, begun
once its lock is held. A success sends its settlement first, a statement that locks the account
row before anything else (common.ledger_pg), so it serves as the account lock, and the job row
comes after it, in the one lock order of every transition that moves money
(lifecycle._lock_account); the row's statement writes only what that settlement allows
(transition_sql.SUCCEED_SETTLED_HERE). The outcomes are common.jobs.lifecycle's, whose
docstrings hold the rules (but for the claim's commit, which does not wait for its WAL flush:
below); what is rare (a job no longer runnable, used-up attempts, a lapsed hold, a settlement
that needs the general ledger) is left to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row

from common import ledger_pg, pg_batch

# A claim commits without waiting for its WAL flush (set by its lock's statement, the pipelined
# `claim_lock`, for its own transaction): one a crash loses leaves the job as it was
# (queued, or a dead worker's lapsed lease) for the sweeper to send again, and the success that
# follows it flushes it too (the WAL is one sequence); what its worker started meanwhile is done
# again, as after a worker's death (a real provider's call billed twice, in a database crash
# within ~0.6 s of the claim: wal_writer_delay's three rounds). The account's claim lock is then held
# without the flush's wait (a WAL flush fewer per job in bench.jobs: 2.4 to 1.8).


# What the success's row statement fails with when its settlement settled a job no longer ours
# (a worker whose lease lapsed, the job claimed again, its hold still open): a value no integer
# reads, so the transaction is aborted and rolled back.
NOT_OURS = "helyx-settled-a-job-not-ours"


@dataclass(frozen=True, slots=True)
class Statements:
    """common.jobs.transition_sql's statements, in psycopg's placeholder form."""

    claim_lock: str  # the claim lock, its transaction set not to wait for its flush
    claim: str
    succeed_settled_here: str


def claim(pg: psycopg.Connection, sql: Statements, params: dict[str, Any], caps: dict[str, int | None],
          max_attempts: int | None) -> tuple[Any, str] | None:
    """The claim's common case: the job runnable with attempts left and its hold open, its plan
    one of `caps` (each plan's running cap; None: no cap). Returns (the claimed row, which under a
    cap may be the account's oldest job waiting for a slot; or None when the cap refused the job
    and it waits for a slot; the job's account), or None, nothing written, to leave the decision
    to common.jobs.lifecycle.claim (a job gone, done, leased or to be failed). One round trip:
    BEGIN, the account's claim lock (setting the commit not to wait for its flush), the claim
    with its wait for a slot (one statement, so one read of the job decides both), COMMIT: the
    lock is held for the server's time only."""
    values = {**params, "caps": json.dumps(caps), "max_attempts": max_attempts}
    cursor = pg_batch.run(pg, [("BEGIN", None), (pg_batch.prepared(sql.claim_lock), {"id": params["id"]}),
                               (pg_batch.prepared(sql.claim), values), ("COMMIT", None)])
    cursor.row_factory = namedtuple_row
    # Any: a namedtuple_row row's fields are the query's columns, which mypy cannot see.
    row: Any = cursor.set_result(2).fetchone()
    if row is None:
        return None
    return (None if row.waits else row), row.account_id


def succeed(pg: psycopg.Connection, sql: Statements, values: dict[str, Any], file_count: int, hold_id: str,
            price: int, description: str, day: str | None) -> bool | None:
    """The job row, its files and its settlement in one transaction, in ONE round trip: BEGIN, the
    one-statement settlement (which locks the account row first), the row with its files (written
    only if that settlement settled the hold at the price), COMMIT. True when done; False when the
    job was no longer ours though its hold was open (the row's statement fails on purpose, so the
    settlement is rolled back; a second round trip); None when the settlement stood aside (a capped
    key, an allowance deficit, a day change, a hold no longer open): nothing written, for
    common.jobs.lifecycle.succeed to do, or to find the job no longer ours.

    COMMIT goes with the statements, not after their answers, so the account row is held for the
    server's own time only: one account's submissions and successes queue on it, and a worker
    thread's next turn at the GIL, among its busy neighbours', used to come first.

    The settlement goes before the row, whether or not the row is ours (rolled back if not). It
    locks the account row first, unless the account is the general ledger's case (then the row is
    locked alone and committed unchanged: nothing is waited for while it is held. A foreign key
    from files to accounts would change that: its check on the insert waits for the account row,
    which a cancel holds while it waits for this job row)."""
    settle_sql, settle_params = ledger_pg.resolve_statement(hold_id, price, values["now"], description, None, None,
                                                            day)
    params = {**values, "hid": hold_id, "price": price, "n": file_count}
    try:
        cursor = pg_batch.run(pg, [("BEGIN", None), (pg_batch.prepared(settle_sql), settle_params),
                                   (pg_batch.prepared(sql.succeed_settled_here), params), ("COMMIT", None)])
    except psycopg.errors.InvalidTextRepresentation as exc:
        if NOT_OURS not in str(exc):
            raise
        pg_batch.rollback(pg)
        return False
    row = cursor.set_result(2).fetchone()
    return True if row is not None and row[0] == file_count else None
