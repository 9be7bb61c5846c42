"""The worker checks a webhook's host again at each delivery, under HELYX_WEBHOOK_ALLOW_PRIVATE: a
host that resolved to a public address at submission may resolve to a private one by then (DNS
rebinding), and the submission's check alone would let the delivery reach it."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text

from common.jobs.submit import submit_job
from tests.integration.webhook_receiver import running_receiver
from tests.workers.helpers import IMAGE_PRICE, Jobs
from workers import actors

PARAMS = {"prompt": "a red kite", "n": 1, "width": 256, "height": 256, "response_format": "url"}
REBOUND = "hooks.example.com"  # resolves to the local receiver by the time of the delivery


@pytest.mark.parametrize("allow_private", [False, True], ids=["private refused", "private allowed"])
def test_a_webhook_host_that_now_resolves_to_a_private_address_is_not_delivered_to(
        make_jobs: Callable[..., Jobs], monkeypatch: pytest.MonkeyPatch, allow_private: bool) -> None:
    real = socket.getaddrinfo

    def rebound(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == REBOUND else host, *args, **kwargs)

    with running_receiver() as (receiver, base):
        monkeypatch.setattr(socket, "getaddrinfo", rebound)
        jobs = make_jobs(webhook_allow_private=allow_private, webhook_max_attempts=1)
        account = jobs.account("free")
        job_id = submit_job(jobs.engine, jobs.principal(account), job_type="image", model="nano-banana-pro",
                            params=PARAMS, price=IMAGE_PRICE, tz=jobs.settings.timezone,
                            webhook_url=f"http://{REBOUND}:{urlsplit(base).port}/hook").job_id
        actors.enqueue(job_id, "image")
        assert jobs.wait(job_id)["status"] == "succeeded"
        jobs.join()
        with jobs.engine.connect() as conn:
            status = conn.execute(text("SELECT webhook_status FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()
        if allow_private:
            assert status == "delivered" and len(receiver.to("/hook")) == 1
        else:
            assert status == "failed" and receiver.to("/hook") == []
