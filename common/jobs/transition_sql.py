"""The SQL of a job's transitions (common.jobs.lifecycle), in SQLAlchemy's form, and the pipelined
ones in psycopg's (common.jobs.lifecycle_pg): what each statement reads, locks and guards is said
beside it."""

from __future__ import annotations

from sqlalchemy import text

from common.jobs import lifecycle_pg
from common.pg_statements import psycopg_form

RUNNABLE = "(status = 'queued' OR (status = 'running' AND lease_until < :now))"
RUNNING_COUNT = ("(SELECT COUNT(*) FROM jobs r WHERE r.account_id = :aid AND r.status = 'running'"
                 " AND r.lease_until >= :now)")
# Under a cap, a slot goes to the account's oldest job of the type that waits for a slot for its
# first run, whichever waiting job's message comes: each one's message tries again every second,
# so the oldest used to start at random, its wait unbounded while the account kept submitting (a
# jobs review). Waiting: sent again (enqueued_at after created_at: refused by the cap, or passed
# over, or found by the sweeper) and never run (attempts 0: a job retried after an error keeps its
# backoff). A job whose first message is still on its way is not waiting: without the cap's
# pressure every claim takes its own job, as before (a burst took older ones in their place, then
# sent its own again, and its jobs/s fell by a third). Migration 0005 indexes exactly these rows.
# Read in the claim's own UPDATE (no round trip of its own: that cost 3-5 % of bench.jobs' jobs/s),
# which starts once the account's claim lock is held: it sees every claim before it. (Read in a
# statement that began before the lock's wait, as the job's read once did, the claims queued on the
# lock all named the same job, the first took it and the others were refused as busy with slots
# free.)
OLDEST_WAITING = (
    "SELECT w.id FROM jobs w JOIN holds wh ON wh.id = w.hold_id WHERE w.account_id = :aid"
    " AND w.type = :type AND w.status = 'queued' AND w.attempts = 0 AND w.enqueued_at > w.created_at"
    " AND wh.status = 'open' AND (w.created_at < :created OR (w.created_at = :created AND w.id < :id))"
    " ORDER BY w.created_at, w.id LIMIT 1"
)
CURRENT = text("SELECT j.account_id, j.type, j.created_at, j.status, j.lease_until, j.attempts, a.plan,"
               " h.status AS hold_status"
               " FROM jobs j JOIN accounts a ON a.id = j.account_id LEFT JOIN holds h ON h.id = j.hold_id"
               " WHERE j.id = :id")
# One account's claims serialize on its claim lock (a transaction advisory lock), taken in a
# statement of its own before the job is read: what the claim reads (the job, the account's plan)
# and counts then includes what the claim before it, or a plan change meanwhile, committed. Not
# the account row, on which the account's reservations and settlements queue: with the claims
# there too, one account's jobs/s fell by a tenth (bench.jobs; bench/README, thirty-seventh round).
# Nothing that holds a job row waits for this lock, so it adds no lock cycle. SQLite's BEGIN
# IMMEDIATE already serializes.
CLAIM_LOCK_OF = "pg_advisory_xact_lock(hashtextextended('helyx.claims:' || account_id, 0))"
CLAIM_LOCK = text(f"SELECT {CLAIM_LOCK_OF} FROM jobs WHERE id = :id")
UNFLUSHED = "set_config('synchronous_commit', 'off', true)"  # (`true`: for this transaction only)
CLAIM_LOCK_UNFLUSHED = text(f"SELECT {CLAIM_LOCK_OF}, {UNFLUSHED} FROM jobs WHERE id = :id")  # lifecycle_pg's
CLAIM_SET = (
    "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = :owner, lease_until = :until,"
    " started_at = COALESCE(started_at, :now)"
)
CLAIM_RETURNING = " RETURNING id, account_id, type, model, params, attempts, hold_id, price, webhook_url"
CLAIM = text(f"{CLAIM_SET} WHERE id = :id AND {RUNNABLE}{CLAIM_RETURNING}")
CLAIM_UNDER_CAP = text(f"{CLAIM_SET} WHERE id = :id AND {RUNNABLE} AND {RUNNING_COUNT} < :cap"
                       f"{CLAIM_RETURNING}")
CLAIM_OLDEST_UNDER_CAP = text(f"{CLAIM_SET} WHERE id = COALESCE(({OLDEST_WAITING}), :id) AND {RUNNABLE}"
                              f" AND {RUNNING_COUNT} < :cap{CLAIM_RETURNING}")
# A runnable job whose claim the cap refused waits for a free slot: queued again (a dead worker's
# lapsed lease included), with enqueued_at now, because the caller re-sends its message. No count
# here: one that a requeue lowered since the claim's own would leave the job queued with no message.
WAIT_FOR_SLOT = text(
    "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, enqueued_at = :now"
    f" WHERE id = :id AND {RUNNABLE}"
)
LOCK_ACCOUNT = text("SELECT 1 FROM accounts WHERE id = :aid FOR UPDATE")
OWNED = "id = :id AND status = 'running' AND lease_owner = :owner"
# (an earlier attempt's error, kept while it was retried, is no error of a job that succeeded)
SUCCEED_SET = ("UPDATE jobs SET status = 'succeeded', progress = 100, finished_at = :now, charged = price,"
               " expires_at = :exp, result = :result, lease_owner = NULL, lease_until = NULL,"
               f" error_code = NULL, error_message = NULL WHERE {OWNED}")
SUCCEED = text(SUCCEED_SET)
FILE_COLUMNS = "INSERT INTO files (id, account_id, job_id, storage_key, content_type, bytes, created_at, expires_at)"
INSERT_FILE = text(f"{FILE_COLUMNS} VALUES (:fid, :aid, :id, :key, :ctype, :bytes, :now, :exp)")
FILES_OF_J = (
    f"{FILE_COLUMNS} SELECT f.id, :aid, j.id, f.storage_key, f.content_type, f.bytes, :now, :exp FROM j,"
    " jsonb_to_recordset(CAST(:files AS jsonb)) AS f(id text, storage_key text, content_type text, bytes integer)"
)
SUCCEED_WITH_FILES = text(f"WITH j AS ({SUCCEED_SET} RETURNING id) {FILES_OF_J}")
# lifecycle_pg's, sent after its settlement in one transaction: the row and its files only if that
# settlement settled the hold at the price in this very transaction (its row's xmin); answers how
# many files it wrote, and fails, to roll the settlement back, when it settled a job not ours.
SUCCEED_SETTLED_HERE = text(
    "WITH s AS (SELECT EXISTS (SELECT 1 FROM holds WHERE id = :hid AND status = 'settled' AND charged = :price"
    " AND xmin = pg_current_xact_id_if_assigned()::xid) AS here),"
    f" j AS ({SUCCEED_SET} AND (SELECT here FROM s) RETURNING id), f AS ({FILES_OF_J} RETURNING 1)"
    f" SELECT CAST(CASE WHEN s.here AND (SELECT COUNT(*) FROM f) <> :n THEN '{lifecycle_pg.NOT_OURS}'"
    " ELSE (SELECT COUNT(*) FROM f)::text END AS integer) FROM s"
)

PIPELINED = lifecycle_pg.Statements(**{name: psycopg_form(statement.text) for name, statement in {
    "claim_lock": CLAIM_LOCK_UNFLUSHED, "current": CURRENT, "claim": CLAIM, "claim_under_cap": CLAIM_UNDER_CAP,
    "claim_oldest_under_cap": CLAIM_OLDEST_UNDER_CAP, "wait_for_slot": WAIT_FOR_SLOT,
    "succeed_settled_here": SUCCEED_SETTLED_HERE}.items()})
