"""On real Redis: a send wakes an idle consumer at once (rather than after its poll interval), a
send is Dramatiq's one script call and nothing more, a waiting consumer leaves its queue as it
was, and the messages themselves still go through Dramatiq's own fetch and ack."""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.common import dq_name

from workers import wakeable_broker
from workers.wakeable_broker import WakeableRedisBroker

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


def _wake_on_send(broker: WakeableRedisBroker, queue: str, send: Any) -> tuple[float, Any]:
    """Start a consumer of `queue` waiting, `send()`, and return how long it took to get the message."""
    consumer = broker.consume(queue, prefetch=1, timeout=IDLE_WAIT_MS)
    received: list[Any] = []

    def consume() -> None:
        while not received:
            message = next(consumer)
            if message is not None:
                received.append(message)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.3)  # the consumer has found nothing and waits on the queue's list
    sent_at = time.monotonic()
    send()
    thread.join(timeout=5)
    assert received, "the consumer was not woken"
    consumer.ack(received[0])
    return time.monotonic() - sent_at, received[0]


def test_a_send_is_one_round_trip(broker: WakeableRedisBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dramatiq's script only: no wake-up of our own after it (a second round trip per job)."""
    writes: list[Any] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        writes.append(command)
        return send(self, command, *args, **kwargs)

    broker.enqueue(_message(0))  # Dramatiq loads its script on its first call
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    broker.enqueue(_message(1))
    assert len(writes) == 1, writes
    packed = writes[0] if isinstance(writes[0], bytes) else b"".join(writes[0])
    assert b"EVALSHA" in packed


def test_a_waiting_consumer_leaves_its_queue_as_it_was(broker: WakeableRedisBroker, redis_url: str) -> None:
    consumer = broker.consume(QUEUE, prefetch=3, timeout=IDLE_WAIT_MS)
    received: list[Any] = []

    def consume() -> None:
        while len(received) < 3:
            message = next(consumer)
            if message is not None:
                received.append(message)

    client = redis.Redis.from_url(redis_url)
    before = set(client.keys("*"))
    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.3)  # waiting on the empty list
    sent = [broker.enqueue(_message(n)) for n in range(3)]
    thread.join(timeout=5)
    assert [m.args for m in received] == [(0,), (1,), (2,)]  # in the order sent, each once
    assert [m.message_id for m in received] == [m.message_id for m in sent]
    for message in received:
        consumer.ack(message)
    assert client.llen(broker.queue_key(QUEUE)) == 0
    assert not {key for key in client.keys("*") if b"wake" in key} - before  # no list of our own


def test_a_delayed_message_wakes_the_consumer_of_the_delay_queue(broker: WakeableRedisBroker) -> None:
    took, message = _wake_on_send(broker, dq_name(QUEUE), lambda: broker.enqueue(_message(5), delay=50))
    assert took < 1.0, took
    assert message.args == (5,)


def test_without_blmove_an_idle_consumer_still_wakes(broker: WakeableRedisBroker, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Redis before 6.2 has no BLMOVE: the wait falls back to BRPOPLPUSH on the same list."""
    def unknown(*args: Any, **kwargs: Any) -> Any:
        raise redis.ResponseError("unknown command 'BLMOVE', with args beginning with: ")

    monkeypatch.setattr(broker.client, "blmove", unknown)
    monkeypatch.setattr(wakeable_broker._WakeableConsumer, "_blmove", True)
    took, message = _wake_on_send(broker, QUEUE, lambda: broker.enqueue(_message(6)))
    assert took < 1.0, took
    assert message.args == (6,)
    assert "BRPOPLPUSH" in caplog.text


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


def _count_fetches(broker: WakeableRedisBroker, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every fetch (Dramatiq's dispatch script) the broker's consumers send from now on."""
    fetches: list[int] = []
    fetch = broker.do_fetch  # (Dramatiq's RedisBroker makes its do_* commands on attribute access)

    def counted(queue_name: str, count: int) -> Any:
        fetches.append(count)
        return fetch(queue_name, count)

    monkeypatch.setattr(broker, "do_fetch", counted, raising=False)
    return fetches


def test_an_idle_consumer_waits_without_fetching(broker: WakeableRedisBroker,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a fetch found the queue empty, a consumer whose wait ends with nothing waits again: it
    used to fetch once per poll interval (six idle consumers per worker process)."""
    # no heartbeat fetch due meanwhile, however late a busy machine lets a wait start again (its own test is below)
    monkeypatch.setattr(wakeable_broker, "FETCH_AT_LEAST_EVERY_SECONDS", 5.0)
    fetches = _count_fetches(broker, monkeypatch)
    consumer = broker.consume(QUEUE, prefetch=8, timeout=20)
    started = time.monotonic()
    for _ in range(6):  # (Redis ends a blocking wait at its next tick, ~100 ms)
        assert next(consumer) is None
    assert 6 * 0.015 < time.monotonic() - started < wakeable_broker.FETCH_AT_LEAST_EVERY_SECONDS
    assert len(fetches) == 1, fetches


def test_an_idle_consumer_still_fetches_for_its_heartbeat(broker: WakeableRedisBroker,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fetch renews the process's heartbeat: without one for Dramatiq's heartbeat timeout,
    another worker would take this one for dead and put its unacknowledged messages back."""
    monkeypatch.setattr(wakeable_broker, "FETCH_AT_LEAST_EVERY_SECONDS", 0.2)
    fetches = _count_fetches(broker, monkeypatch)
    consumer = broker.consume(QUEUE, prefetch=8, timeout=20)
    deadline = time.monotonic() + 1.0
    calls = 0
    while time.monotonic() < deadline:
        assert next(consumer) is None
        calls += 1
    assert 3 <= len(fetches) < calls, (fetches, calls)


def test_a_busy_consumer_fetches_a_batch_once_a_quarter_of_its_prefetch_is_free(
        broker: WakeableRedisBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(20):
        broker.enqueue(_message(n))
    fetches = _count_fetches(broker, monkeypatch)
    consumer = broker.consume(QUEUE, prefetch=8, timeout=IDLE_WAIT_MS)
    held = [next(consumer) for _ in range(8)]
    assert [m.args for m in held] == [(n,) for n in range(8)]
    assert fetches == [8]
    consumer.ack(held.pop(0))
    started = time.monotonic()
    assert next(consumer) is None  # one free: not worth a fetch while 7 wait or run
    assert time.monotonic() - started < 1.0
    assert fetches == [8]
    consumer.ack(held.pop(0))
    taken = [next(consumer), next(consumer)]  # two free (a quarter of 8): both in one fetch
    assert [m.args for m in taken] == [(8,), (9,)]
    assert fetches == [8, 2]


def test_a_consumer_that_emptied_its_queue_waits_before_it_fetches_again(
        broker: WakeableRedisBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    broker.enqueue(_message(1))
    fetches = _count_fetches(broker, monkeypatch)
    consumer = broker.consume(QUEUE, prefetch=8, timeout=200)
    first = next(consumer)
    assert first is not None and first.args == (1,)
    started = time.monotonic()
    assert next(consumer) is None  # the fetch took one of eight: the queue is empty, no fetch to know it
    assert 0.15 < time.monotonic() - started < 2.0
    assert fetches == [8]
    threading.Timer(0.1, lambda: broker.enqueue(_message(2))).start()
    second = None
    while second is None:
        second = next(consumer)
    assert second.args == (2,)
    assert fetches == [8, 7]


def test_a_poll_interval_longer_than_the_socket_timeout_never_outwaits_it(redis_url: str) -> None:
    """HELYX_WORKER_POLL_MS may be set above the client's socket timeout (5 s, workers.broker):
    an idle wait that long failed as a lost Redis, and Dramatiq restarted the consumer, logging a
    critical error, every few seconds. A wait ends by the next heartbeat fetch instead."""
    made = WakeableRedisBroker(url=redis_url, socket_timeout=2)
    made.declare_queue(QUEUE)
    try:
        consumer = made.consume(QUEUE, prefetch=1, timeout=4_000)
        for _ in range(3):
            started = time.monotonic()
            assert next(consumer) is None
            assert time.monotonic() - started < 1.5
    finally:
        made.close()


def test_a_redis_that_stops_answering_during_a_wait_is_a_lost_connection(
        broker: WakeableRedisBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reported as Dramatiq's own consumer reports a lost Redis (it restarts the consumer), not as
    an unexpected error."""
    consumer = broker.consume(QUEUE, prefetch=1, timeout=200)

    def paused(*args: Any) -> None:
        raise redis.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(broker.client, "blmove", paused)
    with pytest.raises(dramatiq.errors.ConnectionClosed):
        next(consumer)
