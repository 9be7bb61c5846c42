"""A job poll on PostgreSQL is one statement (common.jobs.views.poll_job_async): the caller's key,
the job if it is theirs, the available credits and the job's files. It reads exactly what the
two-step read (authenticate, then load_job_and_balance) reads, and refuses exactly as it does:
the key first (401), then another account's job or a job of another type (404)."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import Engine, text

from common import accounts, clock, keys
from common.errors import AuthenticationFailed, NotFound
from common.jobs.submit import submit_job
from common.jobs.views import list_jobs, load_job, load_job_and_balance, poll_job_async
from common.money import MICRO
from common.pg_async import AsyncStatements
from tests.conftest import TEST_TZ, TestAccount, create_test_account

pytestmark = pytest.mark.postgres

PARAMS = {"prompt": "a lighthouse", "n": 2, "width": 256, "height": 256}


def _job(engine: Engine, account: TestAccount, *, files: int = 0) -> str:
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    job = submit_job(engine, principal, job_type="image", model="nano-banana-pro", params=PARAMS, price=40 * MICRO,
                     tz=TEST_TZ)
    if files:
        ids = [f"file_{job.job_id}_{i}" for i in reversed(range(files))]  # the result's order, not the ids'
        with engine.begin() as conn:
            for i, file_id in enumerate(ids):
                conn.execute(text(
                    "INSERT INTO files (id, account_id, job_id, storage_key, content_type, bytes, created_at,"
                    " expires_at) VALUES (:id, :a, :j, :k, 'image/png', :b, :c, :e)"),
                    {"id": file_id, "a": account.account_id, "j": job.job_id, "k": f"key/{file_id}.png",
                     "b": 1000 + i, "c": 1_763_800_000.123456, "e": clock.now().timestamp() + 86_400.654321})
                # (kept a day more: a file past its expiry is gone from every read)
            conn.execute(text("UPDATE jobs SET status = 'succeeded', result = :r WHERE id = :j"),
                         {"r": json.dumps(ids), "j": job.job_id})
    return job.job_id


def _poll(engine: Engine, key: str, job_id: str, job_type: str | None = None):  # type: ignore[no-untyped-def]
    pg = AsyncStatements.for_engine(engine)
    assert pg is not None

    async def run():  # type: ignore[no-untyped-def]
        try:
            return await poll_job_async(pg, key, job_id, job_type, now=clock.now().timestamp())
        finally:
            await pg.close_idle()
    return asyncio.run(run())


@pytest.mark.parametrize("files", [0, 3])
def test_one_statement_reads_what_the_two_step_read_reads(pg_engine: Engine, files: int) -> None:
    account = create_test_account(pg_engine, "pro")
    job_id = _job(pg_engine, account, files=files)
    principal, record, available = _poll(pg_engine, account.api_key, job_id)
    expected, expected_available = load_job_and_balance(pg_engine, account.account_id, job_id)
    assert principal == accounts.authenticate(pg_engine, account.api_key, now=clock.now().timestamp())
    assert (record.row, record.files, available) == (expected.row, expected.files, expected_available)
    assert [f["id"] for f in record.files] == json.loads(record.row["result"] or "[]")
    assert len(record.files) == files


def test_the_key_is_judged_before_the_job(pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "pro")
    job_id = _job(pg_engine, account)
    with pytest.raises(AuthenticationFailed) as unknown:
        _poll(pg_engine, keys.generate_key(), job_id)  # well formed, unknown
    assert unknown.value.status == 401
    with pg_engine.begin() as conn:
        accounts.revoke_key(conn, account.key_id, now=clock.now().timestamp())
    with pytest.raises(AuthenticationFailed) as revoked:
        _poll(pg_engine, account.api_key, job_id)
    assert revoked.value.code == "revoked_api_key"
    with pytest.raises(AuthenticationFailed) as missing:
        _poll(pg_engine, "", job_id)
    assert missing.value.code == "missing_api_key"


def test_another_accounts_job_a_missing_job_and_another_type_are_404(pg_engine: Engine) -> None:
    owner, stranger = create_test_account(pg_engine, "pro"), create_test_account(pg_engine, "pro")
    job_id = _job(pg_engine, owner, files=1)
    for key, wanted_id, job_type, code in [
        (stranger.api_key, job_id, None, "job_not_found"),
        (owner.api_key, "job_does_not_exist", None, "job_not_found"),
        (owner.api_key, job_id, "video", "video_not_found"),
    ]:
        with pytest.raises(NotFound) as refused:
            _poll(pg_engine, key, wanted_id, job_type)
        assert refused.value.code == code


def test_a_listed_page_reads_what_each_jobs_own_read_reads(pg_engine: Engine) -> None:
    """list_jobs reads a page's jobs and their files in two queries; each record is what load_job
    gives for that job alone (files in the result's order, none for a job without a result)."""
    account = create_test_account(pg_engine, "ultra")
    made = [_job(pg_engine, account, files=n) for n in (0, 3, 1, 0, 2)]
    for order, expected_ids in (("desc", made[::-1]), ("asc", made)):
        first, more = list_jobs(pg_engine, account.account_id, job_type=None, limit=3, after=None, order=order)
        rest, no_more = list_jobs(pg_engine, account.account_id, job_type=None, limit=3, after=first[-1].row["id"],
                                  order=order)
        assert (more, no_more) == (True, False)
        page = first + rest
        assert [r.row["id"] for r in page] == expected_ids
        for record in page:
            alone = load_job(pg_engine, account.account_id, record.row["id"])
            assert (record.row, record.files) == (alone.row, alone.files)
