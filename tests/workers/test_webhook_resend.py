"""A finished job whose webhook was never sent is sent once more by the sweeper, never twice."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, text

from common import accounts, clock
from common.jobs import lifecycle, recovery
from common.jobs.submit import submit_job
from tests.conftest import TestAccount


def test_an_unsent_webhook_of_a_canceled_job_is_picked_up_once_after_the_grace(engine: Engine,
                                                                               account: TestAccount) -> None:
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    job_id = submit_job(engine, principal, job_type="image", model="nano-banana-pro",
                        params={"prompt": "p", "n": 1, "width": 256, "height": 256}, price=200_000_000,
                        tz="Asia/Karachi", webhook_url="https://hooks.example.com/helyx").job_id
    lifecycle.cancel(engine, account.account_id, job_id)

    assert recovery.unsent_webhooks(engine, older_than=60) == []  # within the grace: its own send is due
    with clock.frozen(clock.now() + timedelta(seconds=61)):
        assert recovery.unsent_webhooks(engine, older_than=60) == [job_id]
        assert recovery.unsent_webhooks(engine, older_than=60) == []
    with engine.connect() as conn:
        status = conn.execute(text("SELECT webhook_status FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
    assert status == "pending"


def test_jobs_without_a_webhook_are_never_picked(engine: Engine, account: TestAccount) -> None:
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    job_id = submit_job(engine, principal, job_type="image", model="nano-banana-pro",
                        params={"prompt": "p", "n": 1, "width": 256, "height": 256}, price=200_000_000,
                        tz="Asia/Karachi").job_id
    lifecycle.cancel(engine, account.account_id, job_id)
    with clock.frozen(clock.now() + timedelta(seconds=3600)):
        assert recovery.unsent_webhooks(engine, older_than=60) == []
