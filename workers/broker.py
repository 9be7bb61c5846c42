"""The broker, set up in this one place before any actor is declared.

With HELYX_REDIS_URL: Dramatiq's Redis broker (whose idle consumers a send wakes), shared by the
API (which only sends) and the `helyx worker` processes. Without it (the self-contained mode, and
unit tests): a StubBroker, consumed by worker threads inside `helyx serve`.

Dramatiq's own retries are off (max_retries=0 on every actor): a job's attempts live in its row
(common.jobs.lifecycle), so a redelivered or duplicated message can never run a job twice.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker

from common.settings import get_settings
from workers import join_fix
from workers.runtime import CloseRuntimeOnThreadShutdown
from workers.wakeable_broker import WakeableRedisBroker


def build_broker(redis_url: str | None) -> dramatiq.Broker:
    if redis_url:
        # Our own lease sweeper reclaims a dead worker's jobs within seconds; Dramatiq's
        # heartbeat requeue (after heartbeat_timeout) only brings back duplicate messages, and
        # clears a dead worker's leftovers in Redis. It runs inside a fetch or a send, by chance
        # (Dramatiq's default, 1,000 in a million): idle consumers fetch about once a second now
        # (workers.wakeable_broker), a tenth as often as they did when a lower chance was chosen.
        # Socket timeouts: a paused or unreachable Redis fails a send in seconds (the row stays
        # queued and the sweeper re-sends it) instead of hanging a request forever. Idle
        # consumers are woken by each send (workers.wakeable_broker).
        return WakeableRedisBroker(url=redis_url, heartbeat_timeout=30_000, maintenance_chance=1_000,
                           socket_timeout=5, socket_connect_timeout=5)
    return StubBroker()


join_fix.install()  # every process that runs workers imports this module before it stops any
broker = build_broker(get_settings().redis_url)
broker.add_middleware(CloseRuntimeOnThreadShutdown())
dramatiq.set_broker(broker)
