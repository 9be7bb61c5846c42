"""Dramatiq's Redis broker, with idle consumers woken the moment a message reaches their queue.

Dramatiq's Redis consumer has no blocking fetch: an idle one sleeps and polls again (up to the
worker timeout, HELYX_WORKER_POLL_MS), so a job sent to idle workers waited half that interval
on average before anyone looked (about 19 of the 27 ms a 256x256 image took at light load).

Here the consumer's own poll is kept (its fetch, ack and requeue logic is Dramatiq's, unchanged),
but when a poll finds the queue empty it waits on the queue's own list instead of sleeping:
`BLMOVE queue queue RIGHT RIGHT` blocks until the list holds a message id, then moves the last id
to the end of the same list, which leaves the list as it was. Whatever puts a message there wakes
it: a send (Dramatiq's script pushes the id), a delayed message come due, a dead worker's message
put back by Dramatiq's maintenance. A send is Dramatiq's one script call, nothing more (a wake-up
token pushed after it, on a list of its own, was a second round trip per job for the API).
Every consumer waiting on the queue wakes; one fetches the message, the others find the queue
empty and wait again.

A fetch is Dramatiq's dispatch script (~65 us of Redis CPU, and the client's share), so it is
sent only when it can bring something. A consumer whose last fetch emptied the queue waits on the
list before it fetches again (the wait returns at once if a message came meanwhile), and one whose
wait ended with nothing goes back to waiting rather than fetching an empty queue: until then every
idle consumer (six per worker process: images, videos, webhooks and their delay queues) fetched
once per poll interval, and bench.jobs' burst sent ~4.2 fetch scripts per image job, ~0.9 of which
brought one. Once a fetch could take messages, a consumer whose threads are busy waits until a
quarter of its prefetch is free and then takes them in one fetch, instead of one per finished job.
Whatever it does, a consumer still fetches at least once a second (a wait ends by then, whatever
HELYX_WORKER_POLL_MS says): each fetch also renews its process's heartbeat, by which Dramatiq tells
a live worker from a dead one.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import redis
from dramatiq import Consumer
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed

log = logging.getLogger(__name__)
OWN_POLL_MS = 1  # the consumer's own idle sleep; the real wait is on the queue's list, or BUSY_PAUSE
BUSY_PAUSE_SECONDS = 0.005  # too little room to fetch: look again soon for acks and free threads
REFILL_FRACTION = 4  # fetch once this fraction of the prefetch is free (Dramatiq: 2 x threads)
FETCH_AT_LEAST_EVERY_SECONDS = 1.0  # the heartbeat (Dramatiq's timeout here: 30 s, workers.broker)


class WakeableRedisBroker(RedisBroker):
    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        """`timeout` (the worker timeout, ms) becomes the longest wait on an empty queue (and no
        wait outlasts the next heartbeat fetch)."""
        return _WakeableConsumer(self, queue_name, prefetch, OWN_POLL_MS, idle_wait_ms=timeout)

    def queue_key(self, queue_name: str) -> str:
        """The list of a queue's message ids, as Dramatiq's dispatch script names it."""
        return f"{self.namespace}:{queue_name}"


class _WakeableConsumer(_RedisConsumer):
    def __init__(self, broker: WakeableRedisBroker, queue_name: str, prefetch: int, timeout: int, *,
                 idle_wait_ms: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._idle_wait = max(0.001, idle_wait_ms / 1000)
        self._key = broker.queue_key(queue_name)
        self._refill = max(1, prefetch // REFILL_FRACTION)
        self._drained = False  # the last fetch left the queue empty: wait on its list before the next
        self._fetched_at = time.monotonic()

    _blmove = True  # False once Redis said it has no BLMOVE (6.2+)

    def __next__(self) -> Any:
        room = 0 if self.message_cache else self.prefetch - self.outstanding_message_count
        if room > 0 and time.monotonic() - self._fetched_at < FETCH_AT_LEAST_EVERY_SECONDS:
            if room < self._refill and not self._drained:
                room = 0  # messages are waiting: take them in one fetch once more threads are free
            elif self._drained and not self._waited():
                return None  # nothing reached the queue: no fetch (the worker loops back)
        if not self.message_cache and room <= 0:
            # Busy, or too little room to be worth a fetch: the worker's acks and the next fetch wait
            # for this thread to come back.
            time.sleep(BUSY_PAUSE_SECONDS)
            return None
        message = super().__next__()  # a fetch when the cache is empty: Dramatiq's own
        if room > 0:
            self._fetched_at = time.monotonic()
            self._drained = message is None or len(self.message_cache) + 1 < room
            if message is None:  # it fetched and the queue was empty: wait for a message now
                self._drained = not self._waited()
        return message

    def _waited(self) -> bool:
        try:
            return self._wait()
        # As Dramatiq's own consumer reports a lost Redis; a timeout too: the wait is shorter than
        # the socket's timeout, so a Redis that let it run out is one that stopped answering.
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionClosed(exc) from None

    def _wait(self) -> bool:
        """Until the queue's list holds a message (True) or the idle wait is over (False). Never
        past the next heartbeat fetch: a longer wait would put it off, and one as long as the
        client's socket timeout (5 s, workers.broker) would fail as a lost Redis."""
        client = self.broker.client
        until_fetch = FETCH_AT_LEAST_EVERY_SECONDS - (time.monotonic() - self._fetched_at)
        timeout = max(0.001, min(self._idle_wait, until_fetch))  # (0 would be no timeout at all)
        if self._blmove:
            try:
                return client.blmove(self._key, self._key, timeout, "RIGHT", "RIGHT") is not None
            except redis.ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                log.warning("Redis before 6.2 (no BLMOVE): idle consumers wait with BRPOPLPUSH, which may "
                            "take a message sent during a fetch out of its turn")
                type(self)._blmove = False
        # The same wait, but it moves the last id to the front: only a list that was not empty when the
        # wait began (a send between the fetch and the wait) has its order changed. Whole seconds:
        # Redis before 6.0 takes no fraction.
        return client.brpoplpush(self._key, self._key, math.ceil(timeout)) is not None
