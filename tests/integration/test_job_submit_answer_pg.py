"""On PostgreSQL a new job's answer (an image's 202, a created video) is the row its submission's
statement wrote and returned, with the credits left once it was held: no read after it. It is the
job as stored: the same answer GET gives while the job waits, and the same credits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api import job_flow
from common.jobs import views
from common.jobs.submit import submit_job
from common.money import MICRO
from tests.conftest import TEST_TZ, TestAccount, create_test_account, make_settings
from tests.integration.test_jobs_submit_pg import PARAMS, _principal

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_client(tmp_path: Path, pg_url: str, pg_engine: Engine) -> Iterator[TestClient]:
    """The app on PostgreSQL with no worker running: a job stays queued."""
    from api.app import create_app

    with TestClient(create_app(make_settings(tmp_path, database_url=pg_url))) as client:
        yield client


@pytest.fixture
def reads_after_submit(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job ids the routes read back (common.jobs.views' reads of one job, as job_flow calls them)."""
    seen: list[str] = []
    real_async, real_sync = job_flow.load_job_and_balance_async, job_flow.load_job_and_balance

    async def counted_async(pg: Any, account_id: str, job_id: str, job_type: str | None = None) -> Any:
        seen.append(job_id)
        return await real_async(pg, account_id, job_id, job_type)

    def counted_sync(engine: Engine, account_id: str, job_id: str, job_type: str | None = None) -> Any:
        seen.append(job_id)
        return real_sync(engine, account_id, job_id, job_type)

    monkeypatch.setattr(job_flow, "load_job_and_balance_async", counted_async)
    monkeypatch.setattr(job_flow, "load_job_and_balance", counted_sync)
    return seen


def _auth(account: TestAccount, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.api_key}", **headers}


def _available(engine: Engine, account_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT allowance + topup - held FROM accounts WHERE id = :a"),
                                {"a": account_id}).scalar_one())


def test_the_statements_row_is_the_stored_job_and_the_credits_left(pg_engine: Engine) -> None:
    account = create_test_account(pg_engine, "pro")
    made = submit_job(pg_engine, _principal(pg_engine, account), job_type="image", model="nano-banana-pro",
                      params=PARAMS, price=40 * MICRO, tz=TEST_TZ, idempotency_key="k1", webhook_url=None,
                      base_url="http://gateway.example")
    assert made.row is not None
    record, available = views.as_written(made.row)
    stored, stored_available = views.load_job_and_balance(pg_engine, account.account_id, made.job_id)
    assert (record.row, record.files, available) == (stored.row, stored.files, stored_available)
    assert available == _available(pg_engine, account.account_id)
    replay = submit_job(pg_engine, _principal(pg_engine, account), job_type="image", model="nano-banana-pro",
                        params=PARAMS, price=40 * MICRO, tz=TEST_TZ, idempotency_key="k1")
    assert (replay.job_id, replay.created, replay.row) == (made.job_id, False, None)  # an earlier job: read it


def test_a_capped_keys_job_is_read_back(pg_engine: Engine) -> None:
    """The capped path is a transaction of its own (the key row locked first): it returns no row."""
    account = create_test_account(pg_engine, "pro")
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET daily_cap = :c WHERE id = :k"), {"c": 10_000 * MICRO,
                                                                                   "k": account.key_id})
    made = submit_job(pg_engine, _principal(pg_engine, account), job_type="image", model="nano-banana-pro",
                      params=PARAMS, price=40 * MICRO, tz=TEST_TZ)
    assert made.created and made.row is None


def test_an_async_image_and_a_video_are_answered_without_a_read_and_as_get_answers(
        pg_client: TestClient, pg_engine: Engine, reads_after_submit: list[str]) -> None:
    account = create_test_account(pg_engine, "pro")
    image = pg_client.post("/api/v1/images/generations", headers=_auth(account, Prefer="respond-async"),
                           json={"model": "nano-banana-pro", "prompt": "a lighthouse", "size": "256x256"})
    video = pg_client.post("/api/v1/videos", headers=_auth(account),
                           json={"model": "vo3", "prompt": "waves", "seconds": "4", "size": "1280x720"})
    assert (image.status_code, video.status_code) == (202, 200), (image.text, video.text)
    assert reads_after_submit == []
    assert image.json()["status"] == "queued" and video.json()["status"] == "queued"
    left = _available(pg_engine, account.account_id)
    assert video.json()["helyx"]["credits_remaining"] * MICRO == pytest.approx(left)  # both held by then
    assert image.json()["helyx"]["credits_remaining"] * MICRO == pytest.approx(
        left + video.json()["helyx"]["credits_reserved"] * MICRO)  # before the video's hold

    job = pg_client.get(f"/api/v1/jobs/{image.json()['id']}", headers=_auth(account)).json()
    again = pg_client.get(f"/api/v1/videos/{video.json()['id']}", headers=_auth(account)).json()
    assert {**job, "helyx": None} == {**image.json(), "helyx": None}
    assert {**again, "helyx": None} == {**video.json(), "helyx": None}
    assert job["helyx"]["credits_remaining"] == video.json()["helyx"]["credits_remaining"]
