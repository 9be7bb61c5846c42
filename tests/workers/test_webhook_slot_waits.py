"""A webhook that waits for a delivery slot waits longer each time (up to 30 s) and keeps its row
marked in hand, so that the sweeper does not send it a second message; a delivery that raises is
a failed try, counted against its attempts (a security review: an account's webhooks to a receiver
that never answers cost each process a look per webhook every second, and the sweeper added a
message copy for each one after a minute; a delivery that raised was sent again for ever)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from common import clock
from common.jobs import lifecycle, recovery
from tests.workers.helpers import Jobs
from workers import notify
from workers.sweeper import longest_delivery

HOOK = "https://hooks.example.com/h"


def test_slot_waits_double_from_a_second_up_to_thirty() -> None:
    assert [notify.slot_wait_ms(waited) for waited in range(7)] == [1000, 2000, 4000, 8000, 16000, 30000, 30000]
    assert notify.slot_wait_ms(10_000) == 30000


def _finished_with_a_webhook(jobs: Jobs) -> tuple[str, str]:
    account = jobs.account()
    job_id = jobs.submit(account, enqueue=False, webhook_url=HOOK)
    assert lifecycle.cancel(jobs.engine, account.account_id, job_id)  # finished: its webhook is due
    return account.account_id, job_id


def _unsent(jobs: Jobs) -> list[str]:
    """What the sweeper would send again now."""
    return recovery.unsent_webhooks(jobs.engine, 0.0, longest_delivery(jobs.settings), take=False)


def _mark(jobs: Jobs, job_id: str) -> tuple[str | None, float | None]:
    with jobs.engine.connect() as conn:
        row = conn.execute(text("SELECT webhook_status, webhook_pending_at FROM jobs WHERE id = :id"),
                           {"id": job_id}).one()
    return row.webhook_status, row.webhook_pending_at


def test_a_delivery_waiting_for_its_accounts_slot_is_kept_from_the_sweeper(
        make_jobs: Callable[..., Jobs]) -> None:
    jobs = make_jobs()
    account_id, job_id = _finished_with_a_webhook(jobs)
    assert _unsent(jobs) == [job_id]  # never tried: the sweeper's to send
    later: list[dict[str, Any]] = []
    with notify.account_slot(account_id):  # another of the account's webhooks is under way here
        notify.send_webhook(job_id, 1, retry=lambda **kw: later.append(kw), waited=2)
    assert later == [{"args": (job_id, 1, 3), "delay": 4000}]  # the attempt not spent; a longer wait
    status, marked_at = _mark(jobs, job_id)
    assert status == "pending" and marked_at is not None and abs(marked_at - clock.now().timestamp()) < 5
    assert _unsent(jobs) == []  # in hand: no second message from the sweeper


def test_a_waiting_delivery_renews_its_mark_only_before_the_sweeper_would_take_it(
        make_jobs: Callable[..., Jobs]) -> None:
    jobs = make_jobs()
    account_id, job_id = _finished_with_a_webhook(jobs)
    longest = longest_delivery(jobs.settings)

    def wait_once_marked(age: float) -> float | None:
        marked = clock.now().timestamp() - age
        with jobs.engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET webhook_status = 'pending', webhook_pending_at = :t WHERE id = :id"),
                         {"t": marked, "id": job_id})
        with notify.account_slot(account_id):
            notify.send_webhook(job_id, 1, retry=lambda **kw: None, waited=5)
        return _mark(jobs, job_id)[1]

    recent = clock.now().timestamp() - 1
    assert wait_once_marked(1) == pytest.approx(recent, abs=1)  # a recent mark: nothing written
    old_enough = longest - 2 * notify.SLOT_WAIT_MAX_MS / 1000 + 1
    renewed = wait_once_marked(old_enough)
    assert renewed is not None and abs(renewed - time.time()) < 5  # one more wait would pass the limit: renewed


def test_a_delivery_that_raises_is_a_failed_try_counted_against_its_attempts(
        make_jobs: Callable[..., Jobs], monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = make_jobs()
    _, job_id = _finished_with_a_webhook(jobs)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(notify, "deliver", broken)
    later: list[dict[str, Any]] = []
    notify.send_webhook(job_id, 1, retry=lambda **kw: later.append(kw))
    assert [kw["args"] for kw in later] == [(job_id, 2)]  # tried again, as after any failed try
    assert _mark(jobs, job_id)[0] == "pending"
    last = jobs.settings.webhook_max_attempts
    notify.send_webhook(job_id, last, retry=lambda **kw: later.append(kw))
    assert len(later) == 1 and _mark(jobs, job_id)[0] == "failed"  # its attempts spent: failed, not resent
