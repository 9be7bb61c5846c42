"""Webhook deliveries take at most half of a worker process's threads: a receiver that never
answers holds a thread for a whole try, and canceled jobs cost their submitter nothing, so one
account's webhooks had taken every thread and another account's 3 s image waited 69 s (found by an
adversarial review). A delivery that finds no slot is sent again later, never dropped."""

from __future__ import annotations

import threading
from typing import Any

import pytest

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

    def slow_send(job_id: str, attempt: int, retry: Any) -> None:  # a receiver that does not answer
        sent_now.append(job_id)
        if job_id.startswith("held"):
            entered.wait(5)
            release.wait(5)

    monkeypatch.setattr(actors, "send_webhook", slow_send)
    monkeypatch.setattr(actors.deliver_webhook, "send_with_options", lambda **kw: later.append(kw))
    held = [threading.Thread(target=actors.deliver_webhook.fn, args=(f"held{i}",)) for i in range(2)]
    for thread in held:
        thread.start()
    entered.wait(5)  # both slots (4 threads // 2) taken
    actors.deliver_webhook.fn("job_3", 2)
    release.set()
    for thread in held:
        thread.join(5)
    assert sorted(sent_now) == ["held0", "held1"]  # job_3 was not run
    assert later == [{"args": ("job_3", 2), "delay": notify.SLOT_WAIT_MS}]  # kept, with its attempt number
    actors.deliver_webhook.fn("job_4")  # the slots are free again
    assert sent_now[-1] == "job_4"
