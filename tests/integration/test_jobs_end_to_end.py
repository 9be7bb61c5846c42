"""Media jobs end to end in the production shape, with REAL processes: `helyx serve` (the API, with
HELYX_REDIS_URL) and two `helyx worker` processes, on real PostgreSQL and real Redis, driven
through the official OpenAI SDK. Workers are SIGKILLed mid-job, messages duplicated, providers
broken and a hundred submissions raced, and every job is still finished and paid for exactly once.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import av
import dramatiq
import httpx
import openai
import pytest
from dramatiq.brokers.redis import RedisBroker
from PIL import Image
from sqlalchemy import Engine, text

from common import accounts, clock
from common.jobs.submit import submit_job
from tests.api.chat.helpers import assert_books_balance, books, leave_available
from tests.conftest import (
    ADMIN_TOKEN,
    REDIS_TEST_URL,
    TEST_TZ,
    TestAccount,
    create_test_account,
    emptied_pg_engine,
    service_unavailable,
)
from tests.fakes.gemini_image_upstream import FakeGeminiImageUpstream
from tests.fakes.server import serve
from tests.integration.helpers_processes import Proc, Processes, base_env, wait_dramatiq_workers

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

IMAGE_PRICE = 200_000_000
VIDEO_PRICE = 2_000_000_000
JOB_SECONDS = 3.0
TERMINAL = ("succeeded", "failed", "canceled")
BROKEN_KEY_ENV = "HELYX_E2E_BROKEN_IMAGE_KEY"  # read by the catalog, not a HELYX setting


@dataclass
class Stack:
    procs: Processes
    env: dict[str, str]
    api: Proc
    workers: list[Proc]
    engine: Engine
    redis_url: str
    broken: FakeGeminiImageUpstream

    def account(self, plan: str) -> TestAccount:
        return create_test_account(self.engine, plan)

    def sdk(self, account: TestAccount) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.api.api, api_key=account.api_key, max_retries=0, timeout=60)

    def http(self, account: TestAccount) -> httpx.Client:
        return httpx.Client(base_url=self.api.api, headers=account.headers, timeout=30, trust_env=False)

    def ensure_workers(self, count: int = 2) -> None:
        """Replace killed workers, so each test starts with `count` of them."""
        self.workers = [w for w in self.workers if w.alive()]
        while len(self.workers) < count:
            self.workers.append(self.procs.worker(self.env, processes=1, threads=4))

    def job(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return dict(conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).mappings().one())

    def wait(self, job_ids: list[str], timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = [self.job(i) for i in job_ids]
            if all(r["status"] in TERMINAL for r in rows):
                return rows
            if time.monotonic() > deadline:
                pending = [(r["id"], r["status"], r["attempts"]) for r in rows if r["status"] not in TERMINAL]
                logs = "\n".join(f"--- {w.name} {w.popen.pid}\n{w.log(1500)}" for w in self.workers)
                raise AssertionError(f"unfinished after {timeout} s: {pending}\n{logs}")
            time.sleep(0.1)

    def kinds(self, job_id: str) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT e.kind FROM ledger_entries e JOIN holds h ON h.id = e.hold_id"
                                     " WHERE h.purpose = :p ORDER BY e.id"), {"p": f"job:{job_id}"})
            return [r[0] for r in rows]

    def assert_paid_once(self, job_id: str, price: int = IMAGE_PRICE) -> dict[str, Any]:
        row = self.job(job_id)
        assert row["status"] == "succeeded", row
        assert row["charged"] == row["price"] == price
        assert self.kinds(job_id) == ["reserve", "settle"], job_id
        with self.engine.connect() as conn:
            hold = conn.execute(text("SELECT status, charged, amount FROM holds WHERE purpose = :p"),
                                {"p": f"job:{job_id}"}).one()
        assert tuple(hold) == ("settled", price, price)
        return row

    def assert_refunded(self, job_id: str, status: str) -> dict[str, Any]:
        row = self.job(job_id)
        assert row["status"] == status and row["charged"] == 0, row
        assert self.kinds(job_id) == ["reserve", "release"], job_id
        return row


@pytest.fixture(scope="module")
def stack(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import redis

    try:
        redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2).flushdb()
    except Exception as exc:  # noqa: BLE001
        service_unavailable("Redis", exc)
    tmp = tmp_path_factory.mktemp("e2e")
    broken = FakeGeminiImageUpstream()
    broken.fail_status, broken.fail_times = 503, -1
    engine = emptied_pg_engine(pg_url, pool_size=10)
    with serve(broken.app) as broken_url, Processes(tmp / "procs") as procs:
        catalog = tmp / "catalog.toml"
        catalog.write_text(
            f'[providers.broken]\nkind = "gemini"\nbase_url = "{broken_url}/v1beta"\napi_key_env = "{BROKEN_KEY_ENV}"\n'
            '[models."broken-image"]\nkind = "image"\nrate = "200"\nprovider = "broken"\n'
            'upstream_model = "gemini-3-pro-image-preview"\n', "utf-8")
        env = base_env(
            database_url=pg_url, redis_url=REDIS_TEST_URL, simulate=1, storage_dir=tmp / "files",
            secret_key="e2e-signing-secret-0123456789abcdef", simulated_job_seconds=JOB_SECONDS,
            job_lease_seconds=4, sweep_interval_seconds=1, stale_queued_seconds=5, admin_token=ADMIN_TOKEN,
            job_max_retries=2, job_retry_backoff_ms=100, shutdown_grace_seconds=2, catalog=catalog,
            rate_limit_free=100_000, rate_limit_plus=100_000, rate_limit_pro=100_000, rate_limit_ultra=100_000,
        )
        env[BROKEN_KEY_ENV] = "fake-google-key"
        workers = [procs.worker(env, processes=1, threads=4) for _ in range(2)]  # they boot while the API does
        api = procs.serve(env)
        built = Stack(procs, env, api, workers, engine, REDIS_TEST_URL, broken)
        wait_dramatiq_workers(REDIS_TEST_URL, 2)
        yield built
    engine.dispose()


@pytest.fixture
def e2e(stack: Stack) -> Stack:
    stack.ensure_workers(2)
    assert stack.api.alive(), stack.api.log()
    return stack


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image.size


# --- through the SDK ------------------------------------------------------------------------------


def test_images_and_videos_through_the_sdk_against_real_processes(e2e: Stack) -> None:
    account = e2e.account("pro")
    before = books(e2e.engine, account.account_id)
    with e2e.sdk(account) as client, ThreadPoolExecutor(3) as pool:
        by_url = pool.submit(client.images.generate, model="nano-banana-pro", prompt="a lamp", size="256x256")
        inline = pool.submit(client.images.generate, model="nano-banana-pro", prompt="a lamp", size="256x256",
                             response_format="b64_json")
        video = pool.submit(client.videos.create_and_poll, model="vo3", prompt="a lamp, lit", seconds="4",
                            size="1280x720", poll_interval_ms=250)
        by_url_result, inline_result, video_result = by_url.result(60), inline.result(60), video.result(60)
        content = client.videos.download_content(video_result.id).read()

    assert by_url_result.data and by_url_result.data[0].url
    with httpx.Client(trust_env=False, timeout=10) as plain:  # no Authorization header
        opened = plain.get(by_url_result.data[0].url)
    assert opened.status_code == 200 and png_size(opened.content) == (256, 256)
    assert inline_result.data and png_size(base64.b64decode(inline_result.data[0].b64_json or "")) == (256, 256)

    assert video_result.status == "completed", video_result
    with av.open(io.BytesIO(content)) as container:
        frames = list(container.decode(video=0))
    assert (frames[0].width, frames[0].height, len(frames)) == (1280, 720, 32)

    job_id = by_url_result.model_extra["helyx"]["job_id"]  # type: ignore[index]
    with e2e.http(account) as http:
        job = http.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["type"] == "image" and job["helyx"]["credits_charged"] == 200
    assert job["result"]["files"][0]["content_type"] == "image/png"
    for helyx_id in (job_id, inline_result.model_extra["helyx"]["job_id"]):  # type: ignore[index]
        e2e.assert_paid_once(helyx_id)
    e2e.assert_paid_once(video_result.id, VIDEO_PRICE)
    after = assert_books_balance(e2e.engine, account.account_id)
    assert before.balance - after.balance == 2 * IMAGE_PRICE + VIDEO_PRICE


# --- a worker dies mid-job -------------------------------------------------------------------------


def test_a_worker_killed_mid_job_loses_nothing_and_every_job_is_charged_once(e2e: Stack) -> None:
    account = e2e.account("ultra")  # runs up to 8 jobs at once: both workers get some
    before = books(e2e.engine, account.account_id)
    with e2e.http(account) as http:
        ids = [http.post("/images/generations", headers={"Prefer": "respond-async"},
                         json={"prompt": f"job {i}", "size": "256x256"}).json()["id"] for i in range(8)]

    # Wait until jobs run on the victim, then kill it (and its children) without warning.
    victim, victims_jobs = None, []
    deadline = time.monotonic() + 20
    while victim is None:
        assert time.monotonic() < deadline, [e2e.job(i)["status"] for i in ids]
        running = [e2e.job(i) for i in ids]
        for worker in e2e.workers:
            mine = [r["id"] for r in running if r["status"] == "running" and _owned_by(r["lease_owner"], worker)]
            if mine:
                victim, victims_jobs = worker, mine
                break
        time.sleep(0.05)
    victim.kill()
    assert not victim.alive()
    killed_at = time.monotonic()

    rows = e2e.wait(ids, timeout=90)
    took = time.monotonic() - killed_at
    for row in rows:
        e2e.assert_paid_once(row["id"])
    for job_id in victims_jobs:  # they were taken over after the lease lapsed
        assert e2e.job(job_id)["attempts"] >= 2
    # lease (4 s) + sweep (1 s) + the job (3 s): the sweeper's reclaim, well before Dramatiq's own
    # 30 s heartbeat requeue would have brought the dead worker's messages back
    assert took < 25, took
    after = assert_books_balance(e2e.engine, account.account_id)  # sum of entries == balance, no open hold
    assert before.balance - after.balance == 8 * IMAGE_PRICE


def _owned_by(lease_owner: str | None, worker: Proc) -> bool:
    """lease_owner is host:pid:thread:nonce; the pid belongs to the worker's process group."""
    if not lease_owner:
        return False
    try:
        return os.getpgid(int(lease_owner.split(":")[1])) == worker.popen.pid
    except (ProcessLookupError, ValueError, IndexError):
        return False


# --- duplicates, failures, cancel --------------------------------------------------------------------


def test_one_message_sent_three_times_through_redis_charges_once(e2e: Stack) -> None:
    account = e2e.account("pro")
    before = books(e2e.engine, account.account_id)
    principal = accounts.authenticate(e2e.engine, account.api_key, now=clock.now().timestamp())
    submission = submit_job(e2e.engine, principal, job_type="image", model="nano-banana-pro",
                            params={"prompt": "once", "n": 1, "width": 256, "height": 256, "response_format": "url"},
                            price=IMAGE_PRICE, tz=TEST_TZ)
    sender = RedisBroker(url=e2e.redis_url)
    try:
        message = dramatiq.Message(queue_name="images", actor_name="run_image_job", args=(submission.job_id,),
                                   kwargs={}, options={})
        for _ in range(3):
            sender.enqueue(message)
    finally:
        sender.close()

    [row] = e2e.wait([submission.job_id], timeout=30)
    assert row["attempts"] == 1, row
    e2e.assert_paid_once(submission.job_id)
    after = assert_books_balance(e2e.engine, account.account_id)
    assert before.balance - after.balance == IMAGE_PRICE


def test_a_provider_that_always_fails_ends_failed_with_a_full_refund(e2e: Stack) -> None:
    account = e2e.account("free")
    before = books(e2e.engine, account.account_id)
    calls_before = e2e.broken.calls
    with e2e.http(account) as http:
        response = http.post("/images/generations", headers={"Prefer": "respond-async"},
                             json={"model": "broken-image", "prompt": "never", "size": "256x256"})
    assert response.status_code == 202, response.text

    [row] = e2e.wait([response.json()["id"]], timeout=30)
    e2e.assert_refunded(row["id"], "failed")
    assert row["attempts"] == 3 and e2e.broken.calls - calls_before == 3  # job_max_retries=2
    assert row["error_code"] == "upstream_error"
    after = assert_books_balance(e2e.engine, account.account_id)
    assert after.balance == before.balance and after.available == before.available


def test_cancel_refunds_in_full_and_the_workers_leave_the_job_alone(e2e: Stack) -> None:
    account = e2e.account("free")
    before = books(e2e.engine, account.account_id)
    with e2e.http(account) as http:
        job = http.post("/images/generations", headers={"Prefer": "respond-async"},
                        json={"prompt": "stop", "size": "256x256"}).json()
        canceled = http.post(f"/jobs/{job['id']}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert books(e2e.engine, account.account_id).available == before.available
        time.sleep(JOB_SECONDS + 1.5)  # past the time the job would have taken
        view = http.get(f"/jobs/{job['id']}").json()

    assert view["status"] == "canceled" and view["result"] is None
    e2e.assert_refunded(job["id"], "canceled")
    with e2e.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM files WHERE job_id = :j"), {"j": job["id"]}).scalar() == 0
    after = assert_books_balance(e2e.engine, account.account_id)
    assert after.balance == before.balance


# --- a race for the last credits ---------------------------------------------------------------------


def test_a_hundred_concurrent_submissions_against_twenty_images_of_credit_accept_exactly_twenty(
        e2e: Stack) -> None:
    account = e2e.account("ultra")
    leave_available(e2e.engine, account.account_id, 20 * IMAGE_PRICE)
    before = books(e2e.engine, account.account_id)

    def submit(i: int) -> httpx.Response:
        with e2e.http(account) as http:
            return http.post("/images/generations", headers={"Prefer": "respond-async"},
                             json={"prompt": f"race {i}", "size": "256x256"})

    with ThreadPoolExecutor(100) as pool:
        responses = list(pool.map(submit, range(100)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(202) == 20 and statuses.count(402) == 80, statuses
    for refused in (r for r in responses if r.status_code == 402):
        assert refused.json()["error"]["type"] == "insufficient_quota"
    ids = [r.json()["id"] for r in responses if r.status_code == 202]
    with e2e.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM jobs WHERE account_id = :a"),
                            {"a": account.account_id}).scalar() == 20

    e2e.wait(ids, timeout=90)
    for job_id in ids:
        e2e.assert_paid_once(job_id)
    after = assert_books_balance(e2e.engine, account.account_id)
    assert before.balance - after.balance == 20 * IMAGE_PRICE and after.available == 0


def test_the_processes_were_not_disturbed(e2e: Stack) -> None:
    """Nothing above left the API or a surviving worker dead or unready."""
    assert e2e.api.alive()
    with httpx.Client(trust_env=False, timeout=5) as plain:
        ready = plain.get(e2e.api.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    assert all(w.alive() for w in e2e.workers)
