"""The SQL of a job's transitions (common.jobs.lifecycle), in SQLAlchemy's form, and the pipelined
ones (common.jobs.lifecycle_pg, which sends each transaction as one message) in psycopg's: what each
statement reads, locks and guards is said beside it."""

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
# lifecycle_pg's claim: after its lock's statement, the claim with its wait for a slot goes without
# waiting for an answer, so what the general path decides in Python is decided here, and whatever
# it does not cover goes back to it untouched (`ELIGIBLE` false: a job gone, done, leased or lapsed,
# its attempts used up, a plan `:caps` does not name). `:caps` maps each plan to its running cap (a
# JSON object; null: no cap), `:max_attempts` is null for no limit. The same rules as the general
# path: the cap counted in the claim's statement, begun once the lock is held; under a cap, a
# first run gives its slot to the account's oldest job waiting for one (OLDEST_WAITING).
_CAP_OF_PLAN = "CAST(CAST(:caps AS jsonb) ->> {plan} AS integer)"
ELIGIBLE = (
    "COALESCE((SELECT h.status FROM holds h WHERE h.id = {job}.hold_id), 'open') = 'open'"
    " AND (CAST(:max_attempts AS integer) IS NULL OR {job}.attempts < :max_attempts)"
    " AND CAST(:caps AS jsonb) -> {plan} IS NOT NULL"
)
_OLDEST_WAITING_OF_C = (OLDEST_WAITING.replace(":aid", "c.aid").replace(":type", "c.type")
                        .replace(":created", "c.created"))
_CLAIMABLE = (
    "WITH c AS (SELECT j.account_id AS aid, j.type, j.created_at AS created,"
    f" j.status = 'queued' AND j.attempts = 0 AS first_run, {_CAP_OF_PLAN.format(plan='a.plan')} AS cap"
    " FROM jobs j JOIN accounts a ON a.id = j.account_id"
    f" WHERE j.id = :id AND {RUNNABLE.replace('status', 'j.status').replace('lease_until', 'j.lease_until')}"
    f" AND {ELIGIBLE.format(job='j', plan='a.plan')}),"
    " t AS (SELECT CASE WHEN c.cap IS NOT NULL AND c.first_run"
    f" THEN COALESCE(({_OLDEST_WAITING_OF_C}), :id) ELSE :id END AS target FROM c"
    f" WHERE c.cap IS NULL OR {RUNNING_COUNT.replace(':aid', 'c.aid')} < c.cap)"
)
# The wait for a slot in the same statement (one snapshot: it acts only on the job the claim's read
# found eligible, never on one that became runnable since, e.g. requeued by its worker): a no-op
# when the claim took this job; otherwise, the plan capped, the cap refused it or an older job took
# its place, and it waits. Answers the claimed row, or the waiting job's account (`waits`).
_RUNNABLE_JOBS = RUNNABLE.replace("status", "jobs.status").replace("lease_until", "jobs.lease_until")
_CLAIMED_COLUMNS = "id, account_id, type, model, params, attempts, hold_id, price, webhook_url"
CLAIM_PIPELINED = text(
    f"{_CLAIMABLE}, claimed AS ({CLAIM_SET} FROM t WHERE jobs.id = t.target AND {RUNNABLE}{CLAIM_RETURNING}),"
    " waited AS (UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, enqueued_at = :now"
    f" FROM c WHERE jobs.id = :id AND c.cap IS NOT NULL AND {_RUNNABLE_JOBS}"
    " AND NOT EXISTS (SELECT 1 FROM claimed WHERE claimed.id = :id) RETURNING jobs.account_id)"
    f" SELECT {_CLAIMED_COLUMNS}, false AS waits FROM claimed"
    " UNION ALL SELECT NULL, account_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, true FROM waited"
)
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
    "claim_lock": CLAIM_LOCK_UNFLUSHED, "claim": CLAIM_PIPELINED,
    "succeed_settled_here": SUCCEED_SETTLED_HERE}.items()})
