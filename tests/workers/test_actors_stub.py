"""The job actors on the StubBroker with a real dramatiq.Worker in this process: each job is run
and paid for exactly once, whatever the messages, the provider or the user do meanwhile."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from common import billing, clock, ledger
from common.errors import UpstreamError
from common.jobs import lifecycle
from common.money import MICRO
from common.providers.base import ImageRequest, MediaFile
from tests.api.chat.helpers import assert_books_balance, books
from tests.fakes.gemini_image_upstream import FakeGeminiImageUpstream
from tests.fakes.server import serve
from tests.workers.helpers import IMAGE_PRICE, Jobs
from tests.workers.scripted_images import ScriptedImages, held_until_released, pngs

JobsFactory = Callable[..., Jobs]


@pytest.fixture(scope="module")
def _gemini_server() -> Iterator[tuple[FakeGeminiImageUpstream, str]]:
    fake = FakeGeminiImageUpstream()
    with serve(fake.app) as url:
        yield fake, url


@pytest.fixture
def gemini_jobs(_gemini_server: tuple[FakeGeminiImageUpstream, str], make_jobs: JobsFactory, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> tuple[Jobs, FakeGeminiImageUpstream]:
    """nano-banana-pro served by the real Gemini image adapter against the fake upstream."""
    fake, url = _gemini_server
    fake.reset()
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(f'[providers.gemini]\nbase_url = "{url}/v1beta"\n', "utf-8")
    monkeypatch.setenv("GEMINI_API_KEY", "test-google-key")
    return make_jobs(catalog=catalog), fake


def _decode(path: Path) -> Image.Image:
    image = Image.open(io.BytesIO(path.read_bytes()))
    image.load()
    return image


# --- success -------------------------------------------------------------------------------------


def test_an_image_job_succeeds_stores_its_files_and_settles_the_hold_once_at_the_price(
        make_jobs: JobsFactory) -> None:
    jobs = make_jobs()
    account = jobs.account()
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account, n=2, size=(256, 128), prompt="two kites")
    row = jobs.wait(job_id)
    jobs.join()

    assert row["status"] == "succeeded", row
    assert row["attempts"] == 1 and row["progress"] == 100
    assert row["price"] == row["charged"] == 2 * IMAGE_PRICE
    assert row["lease_owner"] is None and row["lease_until"] is None
    assert row["finished_at"] >= row["started_at"] >= row["created_at"]
    files = jobs.files(job_id)
    assert len(files) == 2
    payloads = []
    for stored in files:
        path = jobs.settings.storage_dir / stored["storage_key"]
        assert stored["content_type"] == "image/png" and stored["bytes"] == path.stat().st_size
        image = _decode(path)
        assert image.format == "PNG" and image.size == (256, 128)
        payloads.append(path.read_bytes())
    assert payloads[0] != payloads[1]  # two different images, not one stored twice
    hold = jobs.hold(job_id)
    assert hold["status"] == "settled" and hold["charged"] == hold["amount"] == 2 * IMAGE_PRICE
    assert jobs.kinds(job_id) == ["reserve", "settle"]
    after = assert_books_balance(jobs.engine, account.account_id)
    assert before.balance - after.balance == 2 * IMAGE_PRICE


def test_a_message_delivered_three_times_runs_the_job_once_and_charges_once(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow(call: int, request: ImageRequest) -> list[MediaFile]:
        await asyncio.sleep(0.3)  # the duplicates arrive while the first delivery runs
        return pngs(request)

    provider = ScriptedImages(slow).install(monkeypatch)
    jobs = make_jobs(threads=4)
    account = jobs.account("pro")  # its cap of four running jobs must not be what stops the duplicates
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account)
    jobs.send(job_id, times=2)
    jobs.wait(job_id)
    jobs.join()
    jobs.send(job_id, times=3)  # and again once it is done
    jobs.join()

    row = jobs.job(job_id)
    assert row["status"] == "succeeded" and row["attempts"] == 1
    assert provider.calls == 1
    assert len(jobs.files(job_id)) == 1
    assert jobs.kinds(job_id) == ["reserve", "settle"]
    after = assert_books_balance(jobs.engine, account.account_id)
    assert before.balance - after.balance == IMAGE_PRICE


# --- failures ------------------------------------------------------------------------------------


def test_a_provider_that_always_fails_is_retried_then_failed_with_a_full_refund(
        gemini_jobs: tuple[Jobs, FakeGeminiImageUpstream]) -> None:
    jobs, fake = gemini_jobs
    fake.fail_status, fake.fail_times = 503, -1
    account = jobs.account()
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account)
    row = jobs.wait(job_id)
    jobs.join()

    assert row["status"] == "failed", row
    assert row["attempts"] == jobs.settings.job_max_retries + 1 == 3
    assert fake.calls == 3
    assert row["charged"] == 0 and row["error_code"] == "upstream_error" and row["error_message"]
    assert jobs.files(job_id) == [] and jobs.stored_keys() == []
    hold = jobs.hold(job_id)
    assert hold["status"] == "released" and hold["charged"] == 0
    assert jobs.kinds(job_id) == ["reserve", "release"]
    after = assert_books_balance(jobs.engine, account.account_id)
    assert after.balance == before.balance and after.available == before.available


def test_a_provider_that_fails_twice_then_succeeds_is_charged_once_after_three_attempts(
        gemini_jobs: tuple[Jobs, FakeGeminiImageUpstream]) -> None:
    jobs, fake = gemini_jobs
    fake.fail_status, fake.fail_times = 500, 2
    account = jobs.account()
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account)
    row = jobs.wait(job_id)
    jobs.join()

    # What happened, should it fail (it did when a stale catalog pointed the adapter elsewhere).
    diagnosis = (row["status"], row["attempts"], row["error_code"], row["error_message"], fake.calls)
    assert row["status"] == "succeeded", diagnosis
    assert row["attempts"] == 3 and fake.calls == 3, diagnosis
    assert row["charged"] == IMAGE_PRICE
    assert (row["error_code"], row["error_message"]) == (None, None)  # the failed attempts' error was kept
    [stored] = jobs.files(job_id)
    assert (jobs.settings.storage_dir / stored["storage_key"]).read_bytes() == fake.images_sent[-1]
    assert jobs.kinds(job_id) == ["reserve", "settle"]
    after = assert_books_balance(jobs.engine, account.account_id)
    assert before.balance - after.balance == IMAGE_PRICE


@pytest.mark.parametrize("returned", [0, 1], ids=["none", "one of three"])
def test_fewer_images_than_asked_for_is_a_bad_answer_retried_then_refunded_never_charged_for_all(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch, returned: int) -> None:
    """The price is per image asked for: a provider that sends fewer (or none) is not paid for n."""
    async def short(call: int, request: ImageRequest) -> list[MediaFile]:
        return pngs(request)[:returned]

    provider = ScriptedImages(short).install(monkeypatch)
    jobs = make_jobs()
    account = jobs.account()
    before = books(jobs.engine, account.account_id)
    job_id = jobs.submit(account, n=3)
    row = jobs.wait(job_id)
    jobs.join()
    assert (row["status"], row["error_code"], row["charged"]) == ("failed", "upstream_bad_response", 0), row
    assert provider.calls == jobs.settings.job_max_retries + 1
    assert jobs.files(job_id) == [] and jobs.stored_keys() == []
    after = assert_books_balance(jobs.engine, account.account_id)
    assert after.balance == before.balance


def test_a_permanent_provider_error_fails_the_job_at_once(
        gemini_jobs: tuple[Jobs, FakeGeminiImageUpstream]) -> None:
    jobs, fake = gemini_jobs
    fake.fail_status, fake.fail_times = 400, -1
    account = jobs.account()
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account)
    row = jobs.wait(job_id)
    jobs.join()

    assert row["status"] == "failed" and row["error_code"] == "upstream_bad_request", row
    assert row["attempts"] == 1 and fake.calls == 1
    assert jobs.kinds(job_id) == ["reserve", "release"]
    assert assert_books_balance(jobs.engine, account.account_id).balance == before.balance


def test_a_non_retryable_error_from_any_provider_is_not_retried(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(call: int, request: ImageRequest) -> list[MediaFile]:
        raise UpstreamError("blocked by the provider", retryable=False, code="content_filtered")

    provider = ScriptedImages(refuse).install(monkeypatch)
    jobs = make_jobs(job_max_retries=5)
    account = jobs.account()

    job_id = jobs.submit(account)
    row = jobs.wait(job_id)
    jobs.join()

    assert row["status"] == "failed" and row["error_code"] == "content_filtered" and row["attempts"] == 1
    assert provider.calls == 1
    assert jobs.kinds(job_id) == ["reserve", "release"]
    assert_books_balance(jobs.engine, account.account_id)


def test_a_provider_that_hangs_past_the_time_limit_fails_with_job_time_limit_and_costs_nothing(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    async def hang(call: int, request: ImageRequest) -> list[MediaFile]:
        await asyncio.sleep(60)
        return pngs(request)

    provider = ScriptedImages(hang).install(monkeypatch)
    jobs = make_jobs(image_job_time_limit=0.5, job_max_retries=3)
    account = jobs.account()
    before = books(jobs.engine, account.account_id)

    started = time.monotonic()
    job_id = jobs.submit(account)
    row = jobs.wait(job_id, timeout=10)
    jobs.join()

    assert time.monotonic() - started < 5
    assert row["status"] == "failed" and row["error_code"] == "job_time_limit", row
    assert row["attempts"] == 1 and provider.calls == 1  # a time-out is final: no retry
    assert provider.cancelled == 1  # the provider call itself was stopped
    assert row["charged"] == 0 and jobs.hold(job_id)["status"] == "released"
    assert jobs.kinds(job_id) == ["reserve", "release"]
    after = assert_books_balance(jobs.engine, account.account_id)
    assert after.balance == before.balance


# --- cancel --------------------------------------------------------------------------------------


def test_a_job_canceled_before_it_starts_is_refunded_in_full_and_the_worker_leaves_it_alone(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = ScriptedImages().install(monkeypatch)
    jobs = make_jobs()
    account = jobs.account()
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account, enqueue=False)
    assert books(jobs.engine, account.account_id).available == before.available - IMAGE_PRICE
    lifecycle.cancel(jobs.engine, account.account_id, job_id)
    jobs.send(job_id, times=3)  # its message, late, and duplicates of it
    jobs.join()

    row = jobs.job(job_id)
    assert row["status"] == "canceled" and row["error_code"] == "canceled"
    assert row["attempts"] == 0 and row["started_at"] is None and row["charged"] == 0
    assert provider.calls == 0
    assert jobs.files(job_id) == [] and jobs.stored_keys() == []
    assert jobs.kinds(job_id) == ["reserve", "release"]
    after = assert_books_balance(jobs.engine, account.account_id)
    assert after.balance == before.balance and after.available == before.available


def test_a_job_canceled_while_running_is_refunded_and_its_worker_stops_at_the_next_renewal(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    async def long(call: int, request: ImageRequest) -> list[MediaFile]:
        await asyncio.sleep(30)
        return pngs(request)

    provider = ScriptedImages(long).install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=0.4)  # renewed every 0.1 s
    account = jobs.account()
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account)
    assert provider.started.wait(5)
    assert jobs.job(job_id)["status"] == "running"
    lifecycle.cancel(jobs.engine, account.account_id, job_id)
    refunded = books(jobs.engine, account.account_id)
    assert refunded.available == before.available  # refunded at once, not when the worker notices
    jobs.join(timeout=5)  # the worker gave up well before the provider's 30 s

    row = jobs.job(job_id)
    assert provider.cancelled == 1
    assert row["status"] == "canceled" and row["charged"] == 0 and row["result"] is None
    assert jobs.files(job_id) == [] and jobs.stored_keys() == []
    assert jobs.kinds(job_id) == ["reserve", "release"]
    after = assert_books_balance(jobs.engine, account.account_id)
    assert after.balance == before.balance


def test_a_result_that_arrives_after_cancel_is_discarded(make_jobs: JobsFactory,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    gate, gated = held_until_released()
    provider = ScriptedImages(gated).install(monkeypatch)
    jobs = make_jobs(job_lease_seconds=30)  # the heartbeat would not notice the cancel in time
    account = jobs.account()
    before = books(jobs.engine, account.account_id)

    job_id = jobs.submit(account)
    assert provider.started.wait(5)
    lifecycle.cancel(jobs.engine, account.account_id, job_id)
    gate.set()  # the provider answers after all
    jobs.join(timeout=10)

    row = jobs.job(job_id)
    assert provider.calls == 1 and provider.cancelled == 0  # it really produced a result
    assert row["status"] == "canceled" and row["charged"] == 0 and row["result"] is None
    assert jobs.files(job_id) == []
    assert jobs.stored_keys() == []  # the late files were written, then removed
    assert jobs.kinds(job_id) == ["reserve", "release"]
    assert assert_books_balance(jobs.engine, account.account_id).balance == before.balance


def test_a_job_that_finishes_after_midnight_is_paid_from_the_new_days_allowance(
        make_jobs: JobsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daily reset is lazy (the account's next request runs it): a worker settling first must
    not charge what is left of the day that ended (then reset to full: the job would be free)."""
    ScriptedImages().install(monkeypatch)
    jobs = make_jobs(timezone="Asia/Karachi")
    midnight_pkt = datetime(2031, 3, 10, 19, 0, tzinfo=UTC)
    with clock.frozen(midnight_pkt - timedelta(seconds=1)) as advance:
        account = jobs.account("free")  # 1,000 credits a day
        spent = billing.reserve(jobs.engine, account_id=account.account_id, key_id=None, amount=700 * MICRO,
                                purpose="t", ttl=900, tz=jobs.settings.timezone)
        billing.settle(jobs.engine, spent, 700 * MICRO)
        job_id = jobs.submit(account, enqueue=False)  # 200 held on 2031-03-10
        advance(timedelta(seconds=2))  # 2031-03-11 in Karachi; no request from the account since
        jobs.send(job_id)
        row = jobs.wait(job_id)
        jobs.join()
    assert row["status"] == "succeeded" and row["charged"] == IMAGE_PRICE
    with jobs.engine.connect() as conn:
        balance = ledger.balance(conn, account.account_id)
    assert (balance.allowance, balance.held, balance.allowance_day) == (800 * MICRO, 0, "2031-03-11")
    assert assert_books_balance(jobs.engine, account.account_id)
