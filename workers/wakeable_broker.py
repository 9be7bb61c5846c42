"""Dramatiq's Redis broker, with idle consumers woken the moment a message is sent.

Dramatiq's Redis consumer has no blocking fetch: an idle one sleeps and polls again (up to the
worker timeout, HELYX_WORKER_POLL_MS), so a job sent to idle workers waited half that interval
on average before anyone looked (about 19 of the 27 ms a 256x256 image took at light load).

Here the consumer's own poll is kept (its fetch, ack and requeue logic is Dramatiq's, unchanged),
but when a poll finds the queue empty it waits in a BLPOP on a per-queue wake-up list instead of
sleeping, and every immediate send pushes a token onto that list (trimmed to one: a token only
says "look now"). A token pushed while nobody waits is found by the next idle consumer, which
then polls once for nothing; a lost token (Redis flushed) only means the old poll interval. Delayed messages (retry
backoff) are not woken: their delay queue is polled as before. A consumer whose threads are all
busy does not poll at all (nor wait for tokens): it looks again every few milliseconds, so a
finished message is acknowledged and replaced at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from dramatiq import Consumer, Message
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed

log = logging.getLogger(__name__)
WAKE_PREFIX = "helyx:wake:"
OWN_POLL_MS = 1  # the consumer's own idle sleep; the real wait is the BLPOP (idle) or BUSY_PAUSE
BUSY_PAUSE_SECONDS = 0.005  # every thread has a message: look again soon for acks and free threads


def wake_key(queue_name: str) -> str:
    return WAKE_PREFIX + queue_name


class WakeableRedisBroker(RedisBroker):
    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        """`timeout` (the worker timeout, ms) becomes the longest wait for a wake-up token."""
        return _WakeableConsumer(self, queue_name, prefetch, OWN_POLL_MS, idle_wait_ms=timeout)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        sent = super().enqueue(message, delay=delay)
        if delay is None:
            key = wake_key(message.queue_name)
            try:
                self.client.pipeline(transaction=False).lpush(key, 1).ltrim(key, 0, 0).execute()
            except redis.RedisError as exc:  # the message is sent; a consumer finds it at its next poll
                log.warning("wake-up for queue %s not sent (%s)", message.queue_name, type(exc).__name__)
        return sent


class _WakeableConsumer(_RedisConsumer):  # type: ignore[misc]
    def __init__(self, broker: WakeableRedisBroker, queue_name: str, prefetch: int, timeout: int, *,
                 idle_wait_ms: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._idle_wait = max(0.001, idle_wait_ms / 1000)

    def __next__(self) -> Any:
        message = super().__next__()
        if message is None:
            if self.outstanding_message_count >= self.prefetch:
                # Busy, so it did not fetch: a token would not help, and the worker's acks and the
                # next fetch wait for this thread to come back.
                time.sleep(BUSY_PAUSE_SECONDS)
                return None
            try:  # it fetched and the queue was empty: wait for a send, at most the worker timeout
                self.broker.client.blpop([wake_key(self.queue_name)], timeout=self._idle_wait)
            except redis.ConnectionError as exc:  # as Dramatiq's own consumer reports a lost Redis
                raise ConnectionClosed(exc) from None
        return message
