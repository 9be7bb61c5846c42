"""`helyx_queue_depth` (api.app's reader): ready messages under the queue's name, and those waiting
for their time (a retry's backoff, a job waiting for a running-job slot) under `<queue>.delayed`,
where a backlog of them read as an empty queue (an operator review)."""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from api.app import delayed_size, queue_size
from workers.wakeable_broker import WakeableRedisBroker


def _send(broker: Any, queue: str, n: int, delay: int | None = None) -> None:
    for i in range(n):
        broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="noop", args=(i,), kwargs={}, options={}),
                       delay=delay)


@pytest.mark.redis
def test_on_redis_ready_and_delayed_messages_are_counted_apart(redis_url: str) -> None:
    broker = WakeableRedisBroker(url=redis_url)
    try:
        broker.declare_queue("images")
        assert (queue_size(broker, "images"), delayed_size(broker, "images")) == (0, 0)
        _send(broker, "images", 2)
        _send(broker, "images", 3, delay=60_000)
        assert (queue_size(broker, "images"), delayed_size(broker, "images")) == (2, 3)
        assert (queue_size(broker, "videos"), delayed_size(broker, "videos")) == (0, 0)
    finally:
        broker.close()


def test_in_process_ready_and_delayed_messages_are_counted_apart() -> None:
    broker = StubBroker()
    broker.declare_queue("images")
    _send(broker, "images", 1)
    _send(broker, "images", 4, delay=60_000)
    assert (queue_size(broker, "images"), delayed_size(broker, "images")) == (1, 4)
    broker.queues["images.DQ"].get_nowait()  # as a worker takes one, to hold until its time: not acked yet
    assert delayed_size(broker, "images") == 4  # (counted by the queue's size, it read 0 in `helyx serve`)
