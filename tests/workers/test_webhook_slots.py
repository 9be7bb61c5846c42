"""Webhook deliveries take at most half of a worker process's threads: a receiver that never
answers holds a thread for a whole try, and canceled jobs cost their submitter nothing, so one
account's webhooks had taken every thread and another account's 3 s image waited 69 s (found by an
adversarial review). A delivery that finds no slot is sent again later, never dropped."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from common.webhooks import DeliveryResult
from tests.workers.helpers import Jobs
from workers import actors, notify


@pytest.fixture
def four_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = type("S", (), {"worker_threads": 4})()
    monkeypatch.setattr(notify.context, "settings", lambda: settings)
    monkeypatch.setattr(notify, "_slots", None)


@pytest.mark.usefixtures("four_threads")
def test_a_delivery_beyond_half_the_threads_is_sent_again_later_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Barrier(3), threading.Event()
    sent_now: list[str] = []
    later: list[dict[str, Any]] = []

    def slow_send(job_id: str, attempt: int, retry: Any, waited: int = 0) -> None:  # a receiver that does not answer
        sent_now.append(job_id)
        if job_id.startswith("held"):
            entered.wait(5)
            release.wait(5)

    monkeypatch.setattr(actors, "send_webhook", slow_send)
    monkeypatch.setattr(actors.deliver_webhook, "send_with_options", lambda **kw: later.append(kw))
    kept: list[str] = []
    monkeypatch.setattr(notify, "keep_in_hand", lambda job_id, row=None: kept.append(job_id))
    held = [threading.Thread(target=actors.deliver_webhook.fn, args=(f"held{i}",)) for i in range(2)]
    for thread in held:
        thread.start()
    entered.wait(5)  # both slots (4 threads // 2) taken
    actors.deliver_webhook.fn("job_3", 2)
    release.set()
    for thread in held:
        thread.join(5)
    assert sorted(sent_now) == ["held0", "held1"]  # job_3 was not run
    assert later == [{"args": ("job_3", 2, 1), "delay": notify.SLOT_WAIT_MS}]  # kept, with its attempt number
    assert kept == ["job_3"]  # its row marked in hand: the sweeper does not send it a second message
    actors.deliver_webhook.fn("job_4")  # the slots are free again
    assert sent_now[-1] == "job_4"


def test_an_accounts_webhooks_go_one_at_a_time_and_never_hold_up_anothers(
        make_jobs: Callable[..., Jobs], monkeypatch: pytest.MonkeyPatch) -> None:
    """A free key submitting and canceling jobs (at no cost) with webhooks to a receiver that never
    answers took every delivery slot: another account's webhook arrived 24 s after its job ended
    (found by a security review). Each account now has one delivery under way per process."""
    entered, release = threading.Event(), threading.Event()
    delivered: list[str] = []

    def deliver(url: str, payload: dict[str, Any], **kwargs: Any) -> DeliveryResult:
        delivered.append(payload["data"]["id"])
        if payload["data"]["id"] == slow:
            entered.set()
            release.wait(5)
        return DeliveryResult(True, 1, 204, None, kwargs["webhook_id"])

    monkeypatch.setattr(notify, "deliver", deliver)
    jobs = make_jobs()
    mallory, alice = jobs.account(), jobs.account()
    slow, second, hers = (jobs.submit(who, enqueue=False, webhook_url="https://hooks.example.com/h")
                          for who in (mallory, mallory, alice))
    later: list[dict[str, Any]] = []
    busy = threading.Thread(target=notify.send_webhook, args=(slow, 1, lambda **kw: later.append(kw)))
    busy.start()
    assert entered.wait(5)
    notify.send_webhook(second, 2, retry=lambda **kw: later.append(kw))  # Mallory's second: not now
    notify.send_webhook(hers, 1, retry=lambda **kw: later.append(kw))  # Alice's: at once
    release.set()
    busy.join(5)
    assert delivered == [slow, hers]
    assert later == [{"args": (second, 2, 1), "delay": notify.SLOT_WAIT_MS}]  # kept, with its attempt number
    notify.send_webhook(second, 2, retry=lambda **kw: later.append(kw))  # the account's slot is free again
    assert delivered[-1] == second


def test_the_slots_follow_the_threads_dramatiq_runs_not_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """`helyx worker --threads 4` passes 4 to Dramatiq only: HELYX_WORKER_THREADS stays 8, and
    slots sized from it (4) let webhooks take every thread (a review: 8 image jobs waited up to
    18 s behind receivers that never answer, 2.3 s without them)."""
    settings = type("S", (), {"worker_threads": 8})()
    monkeypatch.setattr(notify.context, "settings", lambda: settings)
    monkeypatch.setattr(notify, "_slots", None)
    worker = type("W", (), {"worker_threads": 4})()
    from workers.process_middleware import SweeperMiddleware  # not workers.boot: it registers and configures

    monkeypatch.setattr("workers.process_middleware.hold_jobs_lock", lambda: None)
    monkeypatch.setattr("workers.process_middleware.freeze_startup_heap", lambda: None)
    SweeperMiddleware().before_worker_boot(None, worker)  # type: ignore[arg-type]
    taken = []
    with notify.delivery_slot() as first, notify.delivery_slot() as second, notify.delivery_slot() as third:
        taken = [first, second, third]
    assert taken == [True, True, False]


def test_a_delivery_of_an_account_whose_lookup_still_runs_waits_without_spending_an_attempt(
        make_jobs: Callable[..., Jobs], monkeypatch: pytest.MonkeyPatch) -> None:
    """While a lookup of the account's that was given up still runs (a name server that never
    answers keeps it ~10 s and more), its next lookups fail at once: tried now, the account's
    webhook to a healthy host would spend its whole series (1+2+4+8 s) and be marked failed for
    good (a review). It is sent again later with the same attempt number; another account's goes."""
    delivered: list[str] = []

    def deliver(url: str, payload: dict[str, Any], **kwargs: Any) -> DeliveryResult:
        delivered.append(payload["data"]["id"])
        return DeliveryResult(True, 1, 204, None, kwargs["webhook_id"])

    monkeypatch.setattr(notify, "deliver", deliver)
    jobs = make_jobs()
    mallory, alice = jobs.account(), jobs.account()
    hers_too, hers = (jobs.submit(who, enqueue=False, webhook_url="https://hooks.example.com/h")
                      for who in (mallory, alice))
    monkeypatch.setattr(notify, "lookup_pending", lambda account_id: account_id == mallory.account_id)
    later: list[dict[str, Any]] = []

    notify.send_webhook(hers_too, 3, retry=lambda **kw: later.append(kw))
    notify.send_webhook(hers, 1, retry=lambda **kw: later.append(kw))

    assert delivered == [hers]
    assert later == [{"args": (hers_too, 3, 1), "delay": notify.SLOT_WAIT_MS}]
