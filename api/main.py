"""The ASGI entry point: `uvicorn api.main:app` (the Procfile's web line)."""

import multiprocessing
import os
import signal

from api.app import create_app
from common import logs
from common.malloc_arenas import limit_malloc_arenas
from common.parent_death import stop_with
from common.settings import get_settings

# A worker process of `helyx serve --workers N` (uvicorn's multiprocess parent) stops when that
# parent dies, even by SIGKILL: else it would serve on, unsupervised, holding the port.
_parent = multiprocessing.parent_process()
if _parent is not None and _parent.pid is not None:
    if os.getppid() == _parent.pid:
        if not stop_with(_parent.pid):
            raise SystemExit(128 + signal.SIGTERM)  # it died before the signal was armed: none will come
    elif not _parent.is_alive():  # handed to init: its supervisor died while this process started
        raise SystemExit(128 + signal.SIGTERM)
    # (else a forkserver's child, whose kernel parent is the forkserver: left alone)

limit_malloc_arenas()  # before the thread pool (and a self-contained serve's job threads) start
logs.configure(get_settings().log_level)
app = create_app()
