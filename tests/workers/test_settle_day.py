"""A job's success retried through a database outage that spans midnight is charged on the
billing day of the try that lands, after that day's reset: the day was taken once, before the
first try, and a late success was charged from the expired day's leftover allowance (free, in
effect, once the next request reset the allowance in full)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from common import clock
from common.jobs import lifecycle
from common.money import MICRO
from tests.api.chat.helpers import assert_books_balance
from tests.workers.helpers import Jobs
from tests.workers.scripted_images import ScriptedImages

JobsFactory = Callable[..., Jobs]
BEFORE_MIDNIGHT = datetime(2031, 3, 10, 18, 59, 59, tzinfo=UTC)  # 23:59:59 in Karachi


def test_each_try_of_a_success_takes_the_billing_day_of_its_own_time(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    ScriptedImages().install(monkeypatch)
    days: list[str] = []
    real = lifecycle.succeed

    with clock.frozen(BEFORE_MIDNIGHT) as advance:
        def down_until_midnight(*args: Any) -> bool:
            days.append(args[-1])
            if len(days) == 1:
                advance(timedelta(seconds=2))  # the outage lasts past midnight
                raise OperationalError("UPDATE jobs", {}, Exception("connection refused"))
            return real(*args)

        monkeypatch.setattr(lifecycle, "succeed", down_until_midnight)
        jobs = make_jobs(timezone="Asia/Karachi")
        account = jobs.account("plus")
        job_id = jobs.submit(account)
        row = jobs.wait(job_id)
        jobs.join()
        after = assert_books_balance(jobs.engine, account.account_id)
    assert row["status"] == "succeeded"
    assert days == ["2031-03-10", "2031-03-11"]
    assert after.allowance == (5000 - 200) * MICRO  # the new day's allowance, less this job
