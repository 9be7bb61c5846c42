"""`helyx worker`: Dramatiq's CLI over workers.actors, kept running by workers.supervisor.

Graceful on SIGTERM: each worker process stops taking messages and finishes the ones it runs,
within the shutdown timeout, and a repeated SIGTERM does not cut that short (workers.stop_once).
When one worker process dies, Dramatiq stops the others and exits; the supervisor starts it
again, and the new workers' sweeper reclaims the dead one's jobs once their lease lapses.
"""

from __future__ import annotations

import os
import sys

from common.db import get_engine
from common.migrate import upgrade
from common.settings import get_settings
from workers.wakeable_broker import FETCH_AT_LEAST_EVERY_SECONDS


def run(processes: int | None = None, threads: int | None = None) -> int:
    settings = get_settings()
    if not settings.redis_url:
        print("helyx: error: `helyx worker` needs HELYX_REDIS_URL; in the self-contained mode `helyx serve` "
              "runs the workers", file=sys.stderr)
        return 2
    upgrade(get_engine(settings.database_url))
    dramatiq = [
        sys.executable, "-m", "dramatiq", "workers.actors", "workers.boot",
        "--processes", str(processes or settings.worker_processes),
        "--threads", str(threads or settings.worker_threads),
        "--worker-shutdown-timeout", str(int(settings.shutdown_grace_seconds * 1000)),
    ]
    # Dramatiq reads this exact lowercase name when it is imported (dramatiq.worker.WORKER_TIMEOUT).
    # At most the consumers' heartbeat interval: no idle wait is longer (workers.wakeable_broker), and
    # an idle worker thread waits this long for a message, which a graceful stop would wait out.
    poll_ms = min(max(1, settings.worker_poll_ms), int(FETCH_AT_LEAST_EVERY_SECONDS * 1000))
    os.environ["dramatiq_worker_timeout"] = str(poll_ms)  # noqa: SIM112
    # Exec'd (same pid) rather than called: the long-lived supervisor then holds neither this
    # process's imports nor the migration's database connection.
    argv = [sys.executable, "-m", "workers.supervisor", "--log-level", settings.log_level, "--", *dramatiq]
    os.execv(sys.executable, argv)
    return 0  # not reached
