"""A job's progress, as the lease renewal records it, never goes back: a retried attempt (its
first was cut off after reporting 60 %) starts its provider at 0 again, and a poller would have
seen the video jump back."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from common import accounts, clock
from common.jobs import lifecycle
from common.jobs.submit import submit_job
from tests.conftest import TEST_TZ, create_test_account


def _progress(engine: Engine, job_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT progress FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one())


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_renewals_never_lower_the_recorded_progress(db: str, request: pytest.FixtureRequest) -> None:
    engine: Engine = request.getfixturevalue("engine" if db == "sqlite" else "pg_engine")
    account = create_test_account(engine, "ultra")
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    job_id = submit_job(engine, principal, job_type="video", model="vo3", price=2_000_000_000, tz=TEST_TZ,
                        params={"prompt": "p", "seconds": 4, "width": 1280, "height": 720}).job_id
    assert lifecycle.claim(engine, job_id, "first", lease_seconds=60, running_cap=None) is not None
    assert lifecycle.renew(engine, job_id, "first", 60, progress=60)
    assert _progress(engine, job_id) == 60
    assert lifecycle.renew(engine, job_id, "first", 60, progress=10)  # a retry's provider starting over
    assert _progress(engine, job_id) == 60
    assert lifecycle.renew(engine, job_id, "first", 60, progress=75)
    assert _progress(engine, job_id) == 75
