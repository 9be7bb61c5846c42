"""Where a job's result files live in storage: one directory per job, under its account's.

An attempt stores its files before it records them; one cut off in between (a killed worker, a
shutdown's grace running out) leaves files no row names, and the expiry sweep works from rows.
Once the job has its outcome (a success, a final failure, a cancel), nothing can record files in
its directory any more, so what is there and unrecorded is removed."""

from __future__ import annotations

import logging
from collections.abc import Collection

from common.storage import Storage

log = logging.getLogger("helyx.jobs")


def job_prefix(account_id: str, job_id: str) -> str:
    return f"{account_id}/{job_id}"


def file_key(account_id: str, job_id: str, file_id: str, extension: str) -> str:
    return f"{job_prefix(account_id, job_id)}/{file_id}{extension}"


def remove_unrecorded(storage: Storage, account_id: str, job_id: str, keep: Collection[str] = ()) -> int:
    """Remove the job's stored files but `keep` (its recorded ones); a storage error is logged, not
    raised: the job's outcome stands either way."""
    try:
        removed = storage.delete_prefix(job_prefix(account_id, job_id), keep=keep)
    except OSError as exc:
        log.warning("job %s: files of earlier attempts not removed (%s)", job_id, exc)
        return 0
    if removed:
        log.info("job %s: removed %d file(s) an earlier attempt stored and never recorded", job_id, removed)
    return removed
