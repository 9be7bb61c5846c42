"""A finished job whose webhook was never sent, or whose send never ended, is sent once more by the
sweeper, never on every sweep."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, text

from common import accounts, clock
from common.jobs import lifecycle, recovery
from common.jobs.submit import submit_job
from tests.conftest import TEST_TZ, TestAccount

LONGEST = 300.0


def _unsent(engine: Engine) -> list[str]:
    return recovery.unsent_webhooks(engine, older_than=60, longest_delivery=LONGEST)


def _canceled_job_with_a_webhook(engine: Engine, account: TestAccount) -> str:
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    job_id = submit_job(engine, principal, job_type="image", model="nano-banana-pro",
                        params={"prompt": "p", "n": 1, "width": 256, "height": 256}, price=200_000_000,
                        tz=TEST_TZ, webhook_url="https://hooks.example.com/helyx").job_id
    lifecycle.cancel(engine, account.account_id, job_id)
    return job_id


def test_an_unsent_webhook_of_a_canceled_job_is_picked_up_once_after_the_grace(engine: Engine,
                                                                               account: TestAccount) -> None:
    job_id = _canceled_job_with_a_webhook(engine, account)
    assert _unsent(engine) == []  # within the grace: its own send is due
    with clock.frozen(clock.now() + timedelta(seconds=61)):
        assert _unsent(engine) == [job_id]
        assert _unsent(engine) == []
    with engine.connect() as conn:
        status = conn.execute(text("SELECT webhook_status FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
    assert status == "pending"


def test_jobs_without_a_webhook_are_never_picked(engine: Engine, account: TestAccount) -> None:
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    job_id = submit_job(engine, principal, job_type="image", model="nano-banana-pro",
                        params={"prompt": "p", "n": 1, "width": 256, "height": 256}, price=200_000_000,
                        tz=TEST_TZ).job_id
    lifecycle.cancel(engine, account.account_id, job_id)
    with clock.frozen(clock.now() + timedelta(seconds=3600)):
        assert _unsent(engine) == []


def test_a_send_taken_in_hand_that_never_ended_is_sent_again_once_past_the_longest_delivery(
        engine: Engine, account: TestAccount) -> None:
    """'pending' was final: a send whose message the broker refused, or whose worker died while
    delivering, was never tried again, and the receiver never heard of the job."""
    job_id = _canceled_job_with_a_webhook(engine, account)
    start = clock.now()
    with clock.frozen(start + timedelta(seconds=61)):
        assert _unsent(engine) == [job_id]
    with clock.frozen(start + timedelta(seconds=61 + LONGEST - 1)):  # its delivery may still be under way
        assert _unsent(engine) == []
    with clock.frozen(start + timedelta(seconds=61 + LONGEST + 1)):
        assert _unsent(engine) == [job_id]
        assert _unsent(engine) == []  # taken in hand again
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET webhook_status = 'delivered' WHERE id = :id"), {"id": job_id})
    with clock.frozen(start + timedelta(days=1)):
        assert _unsent(engine) == []


def test_the_longest_delivery_counts_every_attempt_and_backoff(engine: Engine) -> None:
    from common.settings import Settings
    from workers.sweeper import longest_delivery

    settings = Settings(webhook_max_attempts=5, webhook_timeout_seconds=10, webhook_backoff_seconds=1)
    assert longest_delivery(settings) == 5 * 10 + (1 + 2 + 4 + 8) + 60
