"""A media-jobs harness on the in-process StubBroker: settings on a temporary SQLite file, the
actors pointed at them (`workers.context.configure`), a `dramatiq.Worker` consuming, and readers for
the job row, its files, its hold and its ledger entries. Shared by tests/workers and tests/api/media.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from sqlalchemy import Engine, text

from common import accounts, clock
from common.accounts import Principal
from common.jobs.submit import submit_job
from common.settings import Settings
from tests.conftest import TestAccount, create_test_account
from workers import actors, context
from workers.broker import broker

IMAGE_PRICE = 200_000_000  # micro-credits: nano-banana-pro, 200 credits per image
VIDEO_PRICE = 2_000_000_000  # vo3, 2,000 credits per video
TERMINAL = ("succeeded", "failed", "canceled")
QUEUES = ("images", "videos", "webhooks")


def start_worker(settings: Settings, threads: int = 4) -> dramatiq.Worker:
    """Point the actors at `settings`, empty the stub queues and start consuming."""
    assert type(broker).__name__ == "StubBroker", "unit tests need the StubBroker (unset HELYX_REDIS_URL)"
    context.configure(settings)
    broker.flush_all()
    for queue in QUEUES:
        broker.declare_queue(queue)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=20)
    worker.start()
    return worker


def stop_worker(worker: dramatiq.Worker) -> None:
    worker.stop(timeout=10_000)
    # A Worker registers a middleware on the broker that dramatiq never removes; drop it, so
    # the next test's worker is the only one the shared StubBroker talks to.
    broker.middleware[:] = [m for m in broker.middleware if getattr(m, "worker", None) is not worker]
    broker.flush_all()
    context.configure(None)


@dataclass
class Jobs:
    """Submit jobs as the API would (reserve + row in one transaction) and read what happened."""

    settings: Settings
    engine: Engine
    accounts: dict[str, Principal] = field(default_factory=dict)

    def account(self, plan: str = "free") -> TestAccount:
        return create_test_account(self.engine, plan, tz=self.settings.timezone)

    def principal(self, account: TestAccount) -> Principal:
        return accounts.authenticate(self.engine, account.api_key, now=clock.now().timestamp())

    def submit(self, account: TestAccount, *, job_type: str = "image", n: int = 1, prompt: str = "a red kite",
               size: tuple[int, int] = (256, 256), seconds: int = 4, enqueue: bool = True,
               idempotency_key: str | None = None, webhook_url: str | None = None) -> str:
        width, height = size
        if job_type == "image":
            model, price = "nano-banana-pro", IMAGE_PRICE * n
            params: dict[str, Any] = {"prompt": prompt, "n": n, "width": width, "height": height,
                                      "response_format": "url"}
        else:
            model, price = "vo3", VIDEO_PRICE
            params = {"prompt": prompt, "seconds": seconds, "width": width, "height": height}
        submission = submit_job(self.engine, self.principal(account), job_type=job_type, model=model,
                                params=params, price=price, tz=self.settings.timezone,
                                idempotency_key=idempotency_key, webhook_url=webhook_url)
        if enqueue and submission.created:
            actors.enqueue(submission.job_id, job_type)
        return submission.job_id

    def send(self, job_id: str, times: int = 1, job_type: str = "image") -> None:
        """Deliver the job's message `times` more times (a redelivered or duplicated message)."""
        for _ in range(times):
            actors.enqueue(job_id, job_type)

    def job(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return dict(conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).mappings().one())

    def wait(self, job_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            row = self.job(job_id)
            if row["status"] in statuses:
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {row['status']} after {timeout} s: {row}")
            time.sleep(0.01)

    def join(self, timeout: float = 15.0) -> None:
        """Until every queue is empty and every message acknowledged; an actor crash fails here."""
        for queue in QUEUES:
            broker.join(queue, timeout=int(timeout * 1000), fail_fast=True)

    def files(self, job_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM files WHERE job_id = :id ORDER BY id"), {"id": job_id})
            return [dict(r) for r in rows.mappings()]

    def hold(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM holds WHERE purpose = :p"), {"p": f"job:{job_id}"})
            return dict(row.mappings().one())

    def entries(self, job_id: str) -> list[dict[str, Any]]:
        """The ledger entries of the job's hold, oldest first."""
        hold_id = self.hold(job_id)["id"]
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM ledger_entries WHERE hold_id = :h ORDER BY id"), {"h": hold_id})
            return [dict(r) for r in rows.mappings()]

    def kinds(self, job_id: str) -> list[str]:
        return [e["kind"] for e in self.entries(job_id)]

    def stored_keys(self) -> list[str]:
        """Every result file on disk, relative to the storage root (the signing key excluded)."""
        root = self.settings.storage_dir
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                      and not p.name.startswith("."))
