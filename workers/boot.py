"""Imported by each `helyx worker` process (Dramatiq's worker processes, not its main one): limits
glibc's malloc arenas, configures the logs, makes a repeated stop signal harmless, and registers
workers.process_middleware (the jobs lock, the webhook slots, the sweeper, the jobs a stop cut off)."""

from __future__ import annotations

from common import logs
from common.malloc_arenas import limit_malloc_arenas
from common.settings import get_settings
from workers import stop_once
from workers.broker import broker
from workers.process_middleware import SweeperMiddleware

limit_malloc_arenas()  # before Dramatiq starts this process's worker threads
logs.configure(get_settings().log_level)
stop_once.ignore_repeated_stops()
broker.add_middleware(SweeperMiddleware())
