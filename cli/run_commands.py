"""`helyx serve`, `helyx worker`, `helyx migrate`: the process entry points.

Both servers migrate the database before they start (an advisory lock on PostgreSQL makes
concurrent starts take turns), so a fresh database needs no separate step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from api import serve_process
from cli import preflight, single_instance
from common import accounts, billing, clock, logs
from common.db import dispose_engines, get_engine
from common.migrate import current_revision, upgrade
from common.settings import get_settings

log = logging.getLogger("helyx")

DEMO_EMAIL = "demo@helyx.local"


def migrate(_: argparse.Namespace) -> int:
    engine = get_engine(get_settings().database_url)
    before = current_revision(engine)
    upgrade(engine)
    after = current_revision(engine)
    state = "up to date" if before == after else "created" if before is None else "migrated"
    print(json.dumps({"database": state, "from": before, "revision": after}))
    return 0


def _demo_key(host: str, port: int) -> None:
    """Create (once) the demo account on the Pro plan and print a fresh key for it. The demo keys
    printed by earlier starts are revoked: one start after another, they would fill the account's
    100 keys, and the next start would fail."""
    settings = get_settings()
    engine = get_engine(settings.database_url)
    from sqlalchemy import text

    now = clock.now().timestamp()
    with engine.begin() as conn:
        row = conn.execute(text("SELECT id, plan FROM accounts WHERE email = :e"), {"e": DEMO_EMAIL}).first()
        if row is None:
            plan = "pro"
            account_id, key = accounts.create_account(conn, DEMO_EMAIL, plan, day=billing.today(settings.timezone),
                                                      now=now)
        else:
            account_id, plan = row  # `helyx plan set` may have changed it
            conn.execute(text("UPDATE api_keys SET revoked_at = :now WHERE account_id = :a AND revoked_at IS NULL"
                              " AND name IN ('default', 'demo')"), {"a": account_id, "now": now})
            key = accounts.create_key(conn, account_id, name="demo", now=now)
    base_url = f"http://{host}:{port}/api/v1"
    print(json.dumps({"account_id": account_id, "plan": plan, "api_key": key.secret, "base_url": base_url},
                     indent=2))
    print(f"\nTry:\n  curl -H 'Authorization: Bearer {key.secret}' {base_url}/credits\n", flush=True)


def serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.web_workers
    if settings.self_contained and workers > 1:
        print(f"helyx: error: {'--workers' if args.workers else 'HELYX_WEB_WORKERS'} {workers}: the self-contained "
              "mode runs one process; set HELYX_REDIS_URL (the production shape) for more", file=sys.stderr)
        return 2
    if args.demo and not settings.self_contained:  # a Pro account with a fresh key, on the operator's providers
        print("helyx: error: --demo is for the self-contained mode; in production create accounts with "
              "`helyx account create`", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    catalog = preflight.check(settings)  # a broken HELYX_CATALOG or storage stops here, before a demo key is printed
    try:
        if settings.self_contained:  # before anything is written or any job taken up
            lock = single_instance.claim_database(settings)
            sock = single_instance.bind(host, port)
        else:  # uvicorn binds the port itself: a taken one is one line now, not an error after "serving on"
            lock = single_instance.share_database(settings)
            try:
                single_instance.bind(host, port).close()
            except single_instance.AlreadyServing:
                lock.close()
                raise
    except single_instance.AlreadyServing as exc:
        print(f"helyx: error: {exc}", file=sys.stderr)
        return 1
    upgrade(get_engine(settings.database_url))
    if args.demo:
        _demo_key(host, port)
    database = "SQLite" if settings.is_sqlite else "PostgreSQL"
    shape = f"self-contained ({database}, in-process workers)" if settings.self_contained else (
        f"production shape ({database} + Redis), {workers} process(es)")
    print(f"helyx: serving on http://{host}:{port} — {shape}", file=sys.stderr, flush=True)
    if (warning := preflight.redis_warning(settings)) is not None:
        print(f"helyx: {warning}", file=sys.stderr, flush=True)
    if (warning := preflight.offline_warning(catalog, settings)) is not None:
        print(f"helyx: {warning}", file=sys.stderr, flush=True)
    if (warning := preflight.placeholder_warning(catalog, settings)) is not None:
        print(f"helyx: {warning}", file=sys.stderr, flush=True)
    if not settings.self_contained and workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        print(f"helyx: warning: {workers} API processes without PROMETHEUS_MULTIPROC_DIR: each /metrics scrape "
              "shows the request counters of whichever process answers it; set it to a directory of its own "
              "(README, Metrics)", file=sys.stderr, flush=True)
    if settings.simulation_on and (real := preflight.keyed_providers(catalog, settings)):
        print(f"helyx: not simulated, as their keys are set: the models of {', '.join(real)} call the provider "
              "(and spend on its account); unset the key to simulate them", file=sys.stderr, flush=True)
    if settings.self_contained:
        import uvicorn

        from api.main import app  # imported first, so its start-up heap is frozen before any job runs
        from common.gc_tuning import freeze_startup_heap
        from workers import embedded  # the media workers, as threads of this process

        freeze_startup_heap()
        worker = embedded.start()
        grace = _whole_seconds(settings.shutdown_grace_seconds)
        # log_config=None: uvicorn keeps to the JSON logging set up above (common.logs)
        config = uvicorn.Config(app, timeout_graceful_shutdown=grace, log_level="warning", log_config=None,
                                http=serve_process.HTTP_PROTOCOL)
        server = uvicorn.Server(config)
        # uvicorn raises the signal it stopped on again once it is done, with the handler it found:
        # SIGTERM's default would end the process there, cutting the running jobs short.
        signal.signal(signal.SIGTERM, _like_ctrl_c)
        with lock:  # held until the jobs stop: a new serve resumes what is unfinished, so none may still run
            with sock, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a normal stop, as in uvicorn.run
                server.run(sockets=[sock])
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated SIGTERM does not cut the jobs short
            # a second Ctrl-C does, even for a serve started in the background by a script (SIGINT
            # ignored from birth: uvicorn put that back once it was done)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            with contextlib.suppress(KeyboardInterrupt):
                embedded.stop(worker)
        return 0 if server.started else 3  # uvicorn.run's code for a failed start-up
    _empty_metrics_dir()
    with lock:  # closed here only if the exec failed (or a test replaced it)
        try:
            _become_the_api(lock, serve_process.command_line(
                host=host, port=port, workers=workers,
                grace_seconds=_whole_seconds(settings.shutdown_grace_seconds), log_level=settings.log_level))
        except OSError as exc:  # the venv's python replaced or removed under a running deploy
            print(f"helyx: error: cannot start the API process ({sys.executable}): {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
    return 0


def _become_the_api(lock: Any, args: list[str]) -> None:
    """Replace this process with the API's (api.serve_process): same pid, so a process manager's
    signals reach uvicorn. The serve lock stays held across the exec, its descriptor inherited (the
    kernel drops it as that process ends), so no self-contained serve can start in between."""
    os.set_inheritable(lock.fileno(), True)
    dispose_engines()  # the migration's pooled connections: closed, not cut by the exec
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # -P: the working directory stays off sys.path (a `secrets.py` there, or a checkout newer than
    # the installed package, would be imported instead), as it is for the `helyx` script itself
    exec_process(sys.executable, [sys.executable, "-P", "-m", "api.serve_process", *args])


def exec_process(path: str, argv: list[str]) -> None:
    """os.execv (a seam for tests, which must not lose their own process)."""
    os.execv(path, argv)


def _whole_seconds(grace: float) -> int:
    """uvicorn takes whole seconds: rounded up, so 0.5 s is a grace of 1 s, not none."""
    return math.ceil(grace)


def _empty_metrics_dir() -> None:
    """prometheus_client's multiprocess mode sums every file in its directory: the files of an
    earlier run would count again (common.metrics). Only the files of processes that are gone are
    removed: those of a serve still running on the same directory (another port, a unit being
    restarted beside it) are its live counters."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            if not _process_alive(stale.stem.rpartition("_")[2]):  # counter_<pid>.db, gauge_livesum_<pid>.db
                stale.unlink(missing_ok=True)


def _process_alive(pid: str) -> bool:
    if not (pid.isascii() and pid.isdigit()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _like_ctrl_c(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def worker(args: argparse.Namespace) -> int:
    from workers import runner

    preflight.check(get_settings())  # a worker that boots with a broken catalog fails every job it takes
    return runner.run(processes=args.processes, threads=args.threads)
