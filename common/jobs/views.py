"""Jobs as users see them: the generic job object, the OpenAI video object, the images response.

Result URLs are signed and expire (common.signing), so they open in an <img> or <video> tag
without an Authorization header.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy import Engine, bindparam, text

from common import accounts, clock, pg_statements
from common.accounts import Principal
from common.db import reader
from common.errors import NotFound
from common.jobs.submit import AVAILABLE_COLUMN, BASE_URL_PARAM, JOB_COLUMNS, PRIVATE_PARAM_PREFIX
from common.money import to_credits
from common.pg_async import AsyncStatements
from common.signing import sign_file_url
from common.storage import Storage

VIDEO_STATUS = {"queued": "queued", "running": "in_progress", "succeeded": "completed", "failed": "failed",
                "canceled": "failed"}
JOB_TYPES = {"image": "image", "video": "video"}


@dataclass(frozen=True)
class Linker:
    """Makes signed file URLs: absolute when a base URL is known."""

    base_url: str  # e.g. "http://127.0.0.1:8000" or "" for relative URLs
    secret: bytes
    ttl_seconds: int

    def url(self, file_id: str) -> str:
        expires = int(clock.now().timestamp()) + self.ttl_seconds
        return self.base_url.rstrip("/") + sign_file_url("/api/v1", file_id, expires, self.secret)


@dataclass(frozen=True)
class JobRecord:
    row: dict[str, Any]
    files: list[dict[str, Any]]

    @property
    def gone(self) -> bool:
        """A result is recorded but none of its files remain: a succeeded job whose files were deleted
        (DELETE /videos/{id}) or swept after expiry, or a failed/canceled one that DELETE marked with
        an empty result (`mark_deleted`). `_VISIBLE` is the same test in SQL."""
        return bool(self.row["result"]) and not self.files

    @property
    def params(self) -> dict[str, Any]:
        """The request's parameters as the user sent them (private keys, `_…`, left out)."""
        return {k: v for k, v in self.stored_params.items() if not k.startswith(PRIVATE_PARAM_PREFIX)}

    @property
    def stored_params(self) -> dict[str, Any]:
        return json.loads(self.row["params"])

    @property
    def base_url(self) -> str | None:
        """The absolute base URL the job was submitted to (common.jobs.submit), if recorded."""
        return self.stored_params.get(BASE_URL_PARAM)


_FILE_COLUMNS = "id, account_id, job_id, storage_key, content_type, bytes, created_at, expires_at"
_JOB_WITH_BALANCE = text(
    "SELECT " + ", ".join(f"j.{c.strip()}" for c in JOB_COLUMNS.split(","))
    + f", a.allowance + a.topup - a.held AS {AVAILABLE_COLUMN} FROM jobs j JOIN accounts a ON a.id = j.account_id"
    " WHERE j.id = :id AND j.account_id = :aid"
)
_FILES = text(f"SELECT {_FILE_COLUMNS} FROM files WHERE job_id = :id ORDER BY id")
# A poll on PostgreSQL, in one statement: the caller's key and account (aliased `p_*`), the job if it
# is theirs (NULL columns when not), the available credits, and the job's files as a JSON list.
_PRINCIPAL_ALIASES = [f"p_{i}" for i in range(len(accounts.PRINCIPAL_COLUMNS))]
_FILES_JSON = (
    "(SELECT json_agg(json_build_object("
    + ", ".join(f"'{c.strip()}', f.{c.strip()}" for c in _FILE_COLUMNS.split(","))
    + ") ORDER BY f.id) FROM files f WHERE f.job_id = j.id) AS files_json"
)
_POLL = text(
    "SELECT " + ", ".join(f"{c} AS {a}" for c, a in zip(accounts.PRINCIPAL_COLUMNS, _PRINCIPAL_ALIASES, strict=True))
    + ", " + ", ".join(f"j.{c.strip()}" for c in JOB_COLUMNS.split(","))
    + f", a.allowance + a.topup - a.held AS {AVAILABLE_COLUMN}, " + _FILES_JSON
    + " FROM api_keys k JOIN accounts a ON a.id = k.account_id"
    " LEFT JOIN jobs j ON j.id = :id AND j.account_id = k.account_id WHERE k.key_hash = :h"
)
_FILES_OF_JOBS = text(f"SELECT {_FILE_COLUMNS} FROM files WHERE job_id IN :ids ORDER BY id").bindparams(
    bindparam("ids", expanding=True))
_FILE_BY_ID = text(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = :id")
# `not JobRecord.gone` as a condition on a `jobs` row: no result recorded, or some of its files still kept.
_VISIBLE = ("(jobs.result IS NULL OR EXISTS (SELECT 1 FROM files f WHERE f.job_id = jobs.id"
            " AND f.expires_at >= :now))")
_MARK_DELETED = text(
    "UPDATE jobs SET result = '[]' WHERE id = :id AND account_id = :aid AND status IN ('failed', 'canceled')"
    " AND result IS NULL"
)


def load_job(engine: Engine, account_id: str, job_id: str, job_type: str | None = None) -> JobRecord:
    """The job with its files; another account's job (or one of another type) is 404."""
    return load_job_and_balance(engine, account_id, job_id, job_type)[0]


def load_job_and_balance(engine: Engine, account_id: str, job_id: str, job_type: str | None = None
                         ) -> tuple[JobRecord, int]:
    """The job with its files, and the account's available credits: one query for a job without
    a result yet (what a poll mostly sees), two with one."""
    params = {"id": job_id, "aid": account_id}
    row, available, result_ids = _found(pg_statements.all_mappings(engine, _JOB_WITH_BALANCE, params), job_id,
                                        job_type)
    files = pg_statements.all_mappings(engine, _FILES, {"id": job_id}) if result_ids else []
    return _record(row, files, result_ids), available


async def load_job_and_balance_async(pg: AsyncStatements, account_id: str, job_id: str, job_type: str | None = None
                                     ) -> tuple[JobRecord, int]:
    """`load_job_and_balance` on the API's event loop (PostgreSQL, common.pg_async)."""
    params = {"id": job_id, "aid": account_id}
    row, available, result_ids = _found(await pg.all_mappings(_JOB_WITH_BALANCE, params), job_id, job_type)
    files = await pg.all_mappings(_FILES, {"id": job_id}) if result_ids else []
    return _record(row, files, result_ids), available


async def poll_job_async(pg: AsyncStatements, presented: str | None, job_id: str, job_type: str | None,
                         *, now: float) -> tuple[Principal, JobRecord, int]:
    """Authenticate and read the job, its files and the available credits in one statement (a
    poll's whole database work on PostgreSQL). The key is judged first: a bad key is 401 whether
    or not the job exists; then another account's job, or one of another type, is 404."""
    rows = await pg.all_mappings(_POLL, {**accounts.lookup_params(presented), "id": job_id})
    row = rows[0] if rows else {}
    principal = accounts.principal_from_row(tuple(row.pop(a) for a in _PRINCIPAL_ALIASES) if row else None, now)
    files = row.pop("files_json", None) or []
    job, available, result_ids = _found(rows if row["id"] is not None else [], job_id, job_type)
    return principal, _record(job, files, result_ids), available


def as_written(row: dict[str, Any]) -> tuple[JobRecord, int]:
    """A new job as its submission's statement returned it (common.jobs.submit.Submission.row): no
    files yet, and the account's available credits once its hold was made."""
    job = dict(row)
    available = int(job.pop(AVAILABLE_COLUMN))
    return JobRecord(job, []), available


def _found(rows: list[dict[str, Any]], job_id: str, job_type: str | None) -> tuple[dict[str, Any], int, list[str]]:
    """The job row (another account's, or one of another type, is 404), the account's available
    credits, and the ids of its result files."""
    if not rows or (job_type is not None and rows[0]["type"] != job_type):
        raise NotFound(f"No {job_type or 'job'} with id {job_id}.", code=f"{job_type or 'job'}_not_found",
                       param="id")
    row = rows[0]
    available = int(row.pop(AVAILABLE_COLUMN))
    return row, available, json.loads(row["result"]) if row["result"] else []


def _record(row: dict[str, Any], files: list[dict[str, Any]], result_ids: list[str]) -> JobRecord:
    """The job and its result files still kept: one past its expiry counts as gone at once, as
    `find_file` has it, not only once the sweeper deleted it (every route then agrees)."""
    now = clock.now().timestamp()
    ordered = {f["id"]: f for f in files if f["expires_at"] >= now}
    return JobRecord(row, [ordered[i] for i in result_ids if i in ordered])


def list_jobs(engine: Engine, account_id: str, *, job_type: str | None, limit: int, after: str | None,
              order: str = "desc", skip_gone: bool = False, status: str | None = None) -> tuple[list[JobRecord], bool]:
    """A page of the account's jobs, newest first (or oldest first), after the job id `after`.
    With `skip_gone`, jobs whose results were deleted or expired are left out in the query itself,
    so the page is full and `has_more` is true only when another job follows. `after` may be a
    gone job: the page continues from where it stood; one that is not the account's is a
    NotFound (ignoring it would start again from the top, and a client paging on would loop)."""
    direction, compare = ("DESC", "<") if order == "desc" else ("ASC", ">")
    clauses, params = ["account_id = :aid"], {"aid": account_id, "n": limit + 1}
    if job_type:
        clauses.append("type = :type")
        params["type"] = job_type
    if status:
        clauses.append("status = :status")
        params["status"] = status
    if skip_gone:
        clauses.append(_VISIBLE)
        params["now"] = clock.now().timestamp()
    with reader(engine).connect() as conn:
        if after:
            pivot = conn.execute(text("SELECT created_at FROM jobs WHERE id = :id AND account_id = :aid"),
                                 {"id": after, "aid": account_id}).scalar()
            if pivot is None:  # an unknown id and another account's read the same
                raise NotFound(f"No job {after} to list after (give the last_id of the previous page).",
                               code="job_not_found", param="after")
            # (one row comparison: the index's created_at bounds the scan; as an OR, it only filtered it)
            clauses.append(f"(created_at, id) {compare} (:pivot, :after)")
            params.update(pivot=pivot, after=after)
        rows = conn.execute(text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(clauses)}"
                                 f" ORDER BY created_at {direction}, id {direction} LIMIT :n"), params).mappings().all()
        page = [dict(r) for r in rows[:limit]]
        files: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with_result = [r["id"] for r in page if r["result"]]
        if with_result:  # the whole page's files in one query, not one per job
            for f in conn.execute(_FILES_OF_JOBS, {"ids": with_result}).mappings():
                files[f["job_id"]].append(dict(f))
    records = [_record(r, files[r["id"]], json.loads(r["result"]) if r["result"] else []) for r in page]
    return records, len(rows) > limit


def mark_deleted(engine: Engine, account_id: str, job_id: str) -> None:
    """Record that the user deleted a failed or canceled job (DELETE /videos/{id}): an empty result
    list with no files reads as gone (`JobRecord.gone`), so it then answers 404 and leaves the
    video list. No column is needed: such a job never had a result. Succeeded jobs are untouched
    (deleting their files makes them gone); unfinished ones are canceled first by the caller."""
    with engine.begin() as conn:
        conn.execute(_MARK_DELETED, {"id": job_id, "aid": account_id})


def job_view(record: JobRecord, linker: Linker, remaining: int | None = None) -> dict[str, Any]:
    row = record.row
    error = {"code": row["error_code"], "message": row["error_message"]} if row["status"] in (
        "failed", "canceled") else None
    helyx: dict[str, Any] = {"job_id": row["id"], "credits_charged": to_credits(row["charged"]),
                             "credits_reserved": to_credits(row["price"])}
    if remaining is not None:
        helyx["credits_remaining"] = to_credits(max(0, remaining))
    return {
        "id": row["id"], "object": "job", "type": row["type"], "model": row["model"], "status": row["status"],
        "progress": row["progress"], "attempts": row["attempts"], "params": record.params,
        "created_at": row["created_at"], "started_at": row["started_at"], "finished_at": row["finished_at"],
        "expires_at": row["expires_at"],
        "result": {"files": [_file_view(f, linker) for f in record.files]} if row["status"] == "succeeded" else None,
        "error": error, "helyx": helyx,
    }


def _file_view(f: dict[str, Any], linker: Linker) -> dict[str, Any]:
    return {"id": f["id"], "url": linker.url(f["id"]), "content_type": f["content_type"], "bytes": f["bytes"]}


def video_view(record: JobRecord, remaining: int | None = None) -> dict[str, Any]:
    row, params = record.row, record.params
    status = VIDEO_STATUS[row["status"]]
    error = None
    if status == "failed":
        error = {"code": row["error_code"] or "failed", "message": row["error_message"] or "The video failed."}
    helyx: dict[str, Any] = {"job_id": row["id"], "credits_charged": to_credits(row["charged"]),
                             "credits_reserved": to_credits(row["price"])}  # as a job's view has it
    if remaining is not None:
        helyx["credits_remaining"] = to_credits(max(0, remaining))
    return {
        "id": row["id"], "object": "video", "model": row["model"], "status": status,
        "progress": row["progress"] if status != "completed" else 100,
        "created_at": int(row["created_at"]),
        "completed_at": int(row["finished_at"]) if status == "completed" and row["finished_at"] else None,
        "expires_at": int(row["expires_at"]) if row["expires_at"] else None,
        "seconds": str(params["seconds"]), "size": f"{params['width']}x{params['height']}",
        "prompt": params.get("prompt"), "remixed_from_video_id": None, "error": error, "helyx": helyx,
    }


def images_response(record: JobRecord, linker: Linker, storage: Storage, response_format: str,
                    remaining: int | None) -> dict[str, Any]:
    """The OpenAI images response for a finished image job."""
    data = []
    for f in record.files:
        if response_format == "b64_json":
            data.append({"b64_json": base64.b64encode(b"".join(storage.iter_chunks(f["storage_key"]))).decode()})
        else:
            data.append({"url": linker.url(f["id"])})
    helyx: dict[str, Any] = {"job_id": record.row["id"], "credits_charged": to_credits(record.row["charged"])}
    if remaining is not None:
        helyx["credits_remaining"] = to_credits(max(0, remaining))
    shape = _made(storage, record.files[0]) if record.files else {}
    return {"created": int(record.row["created_at"]), "data": data, **shape, "helyx": helyx}


def _made(storage: Storage, stored: dict[str, Any]) -> dict[str, str]:
    """`size` and `output_format` of what was made, as OpenAI's GPT Image models answer them: read
    from the stored image's header, since a provider may answer another size than asked (Gemini
    answers its own size for the nearest aspect ratio). Left out when the header cannot be read."""
    shape = {"output_format": stored["content_type"].removeprefix("image/")}
    try:
        with storage.open(stored["storage_key"]) as handle, Image.open(handle) as image:
            shape["size"] = f"{image.width}x{image.height}"
    except (OSError, ValueError):  # gone meanwhile, or not an image Pillow knows
        pass
    return shape


def find_file(engine: Engine, file_id: str) -> dict[str, Any]:
    with reader(engine).connect() as conn:
        row = conn.execute(_FILE_BY_ID, {"id": file_id}).mappings().first()
    if row is None or row["expires_at"] < clock.now().timestamp():
        raise NotFound(f"No file {file_id}", code="file_not_found", param="id")
    return dict(row)
