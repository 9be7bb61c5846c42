"""On real Redis: a send wakes an idle consumer at once (rather than after its poll interval), the
wake-up list never holds more than one token, a delayed send wakes nobody, and the messages
themselves still go through Dramatiq's own fetch and ack."""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import pytest
import redis

from workers.wakeable_broker import WakeableRedisBroker, wake_key

pytestmark = pytest.mark.redis

QUEUE = "wake-test"
IDLE_WAIT_MS = 10_000  # a consumer that missed the wake-up would take this long


@pytest.fixture
def broker(redis_url: str) -> Any:
    made = WakeableRedisBroker(url=redis_url)
    made.declare_queue(QUEUE)
    yield made
    made.close()


def _message(n: int) -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name=QUEUE, actor_name="noop", args=(n,), kwargs={}, options={})


def test_a_send_wakes_an_idle_consumer_at_once(broker: WakeableRedisBroker) -> None:
    consumer = broker.consume(QUEUE, prefetch=1, timeout=IDLE_WAIT_MS)
    received: list[tuple[float, Any]] = []

    def consume() -> None:
        while not received:
            message = next(consumer)
            if message is not None:
                received.append((time.monotonic(), message))

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.3)  # the consumer has found nothing and waits in its BLPOP
    sent_at = time.monotonic()
    broker.enqueue(_message(1))
    thread.join(timeout=5)
    assert received, "the consumer was not woken"
    took = received[0][0] - sent_at
    assert took < 1.0, took
    assert received[0][1].args == (1,)
    consumer.ack(received[0][1])
    assert broker.client.llen(f"dramatiq:{QUEUE}") == 0  # fetched and acknowledged by Dramatiq's own code


def test_the_wake_up_list_holds_at_most_one_token_and_a_delayed_send_adds_none(
        broker: WakeableRedisBroker, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for n in range(5):
        broker.enqueue(_message(n))
    assert client.lrange(wake_key(QUEUE), 0, -1) == [b"1"]
    client.delete(wake_key(QUEUE))
    broker.enqueue(_message(9), delay=60_000)
    assert client.llen(wake_key(QUEUE)) == 0


def test_an_idle_consumer_without_a_send_waits_its_poll_interval(broker: WakeableRedisBroker) -> None:
    consumer = broker.consume(QUEUE, prefetch=1, timeout=200)
    started = time.monotonic()
    assert next(consumer) is None
    assert 0.15 < time.monotonic() - started < 2.0


def test_a_busy_consumer_does_not_wait_for_tokens(broker: WakeableRedisBroker) -> None:
    """Every thread has a message (prefetch reached): it comes back in milliseconds, so the
    worker's acknowledgements and its next fetch are not held up by an idle wait."""
    consumer = broker.consume(QUEUE, prefetch=1, timeout=IDLE_WAIT_MS)
    broker.enqueue(_message(1))
    held = None
    while held is None:
        held = next(consumer)
    started = time.monotonic()
    assert next(consumer) is None  # busy: prefetch 1, one message not yet acknowledged
    assert time.monotonic() - started < 1.0
    consumer.ack(held)


def test_a_wake_up_that_cannot_be_sent_does_not_fail_the_send(broker: WakeableRedisBroker,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The token is only a hint: the message is in the queue, so the send succeeds regardless."""
    def broken_pipeline(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("wake-up list unreachable")

    monkeypatch.setattr(broker.client, "pipeline", broken_pipeline)
    broker.enqueue(_message(7))
    consumer = broker.consume(QUEUE, prefetch=1, timeout=200)
    message = None
    deadline = time.monotonic() + 5
    while message is None and time.monotonic() < deadline:
        message = next(consumer)
    assert message is not None and message.args == (7,)
    consumer.ack(message)
