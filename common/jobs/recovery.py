"""What the sweeper finds: queued jobs nobody picked up, running jobs whose worker died, and
expired results. Every process that runs workers sweeps; all of it is safe to run concurrently
because the job transitions themselves are conditional."""

from __future__ import annotations

from sqlalchemy import Engine, text

from common import clock


def stale_queued(engine: Engine, older_than: float, limit: int = 500) -> list[str]:
    """Queued jobs whose message may be lost; their enqueued_at is bumped so the next sweep waits.

    On PostgreSQL one statement that skips the rows another transaction holds: a claim locks two
    job rows (the oldest waiting job it takes, then its own job), and a sweep that locked them one
    by one, in its own order, deadlocked with it (the claim's job then lost its message)."""
    now = clock.now().timestamp()
    params = {"cutoff": now - older_than, "n": limit, "now": now}
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            return [r[0] for r in conn.execute(text(
                "UPDATE jobs SET enqueued_at = :now WHERE id IN (SELECT id FROM jobs WHERE status = 'queued'"
                " AND enqueued_at < :cutoff ORDER BY enqueued_at LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING id"),
                params)]
        rows = conn.execute(
            text("SELECT id FROM jobs WHERE status = 'queued' AND enqueued_at < :cutoff ORDER BY enqueued_at"
                 " LIMIT :n"), params,
        ).all()
        ids = [r[0] for r in rows]
        for job_id in ids:
            conn.execute(text("UPDATE jobs SET enqueued_at = :now WHERE id = :id AND status = 'queued'"),
                         {"now": now, "id": job_id})
    return ids


def expired_leases(engine: Engine, limit: int = 500) -> dict[tuple[str, int], str]:
    """(id, attempts) -> type of the running jobs whose worker stopped renewing the lease (crashed
    or killed)."""
    now = clock.now().timestamp()
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, attempts, type FROM jobs WHERE status = 'running' AND lease_until < :now LIMIT :n"),
            {"now": now, "n": limit},
        ).all()
    return {(r[0], r[1]): r[2] for r in rows}


def requeue_all_unfinished(engine: Engine) -> list[str]:
    """Self-contained start-up: this process is the only worker, so whatever was running when it
    stopped is runnable again. Returns every unfinished job id, to enqueue."""
    now = clock.now().timestamp()
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL,"
                          " enqueued_at = :now WHERE status = 'running'"), {"now": now})
        rows = conn.execute(text("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at")).all()
    return [r[0] for r in rows]


_UNSENT = ("webhook_url IS NOT NULL AND status IN ('succeeded', 'failed', 'canceled') AND"
           " ((webhook_status IS NULL AND finished_at < :cutoff) OR (webhook_status = 'pending'"
           " AND (webhook_pending_at IS NULL OR webhook_pending_at < :stale)))")


def unsent_webhooks(engine: Engine, older_than: float, longest_delivery: float, limit: int = 200, *,
                    take: bool = True) -> list[str]:
    """Finished jobs whose webhook was never sent (the process died between the state change and
    the send), or whose send was taken in hand longer ago than any delivery lasts (the broker
    refused the message, the worker died mid-delivery). With `take`, each is marked pending, with
    the time, here: sent once more, not on every sweep. Receivers deduplicate on its stable
    webhook-id."""
    now = clock.now().timestamp()
    bounds = {"cutoff": now - older_than, "stale": now - longest_delivery}
    with engine.begin() as conn:
        rows = conn.execute(text(f"SELECT id FROM jobs WHERE {_UNSENT} LIMIT :n"), {**bounds, "n": limit}).all()
        ids = [r[0] for r in rows]
        for job_id in ids if take else []:
            conn.execute(text(f"UPDATE jobs SET webhook_status = 'pending', webhook_pending_at = :now"
                              f" WHERE id = :id AND {_UNSENT}"), {**bounds, "id": job_id, "now": now})
    return ids


def expired_files(engine: Engine, limit: int = 500) -> list[tuple[str, str]]:
    """(file id, storage key) of results past their expiry."""
    now = clock.now().timestamp()
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, storage_key FROM files WHERE expires_at < :now LIMIT :n"),
                            {"now": now, "n": limit}).all()
    return [(r[0], r[1]) for r in rows]


def forget_files(engine: Engine, file_ids: list[str]) -> None:
    with engine.begin() as conn:
        for file_id in file_ids:
            conn.execute(text("DELETE FROM files WHERE id = :id"), {"id": file_id})
