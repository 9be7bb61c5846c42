"""bench/jobs.py --floor: the same burst through the job floor (bench._job_floor_app and
bench._job_floor_actor: the web stack, Dramatiq on Redis, the PNG and the file, no database
statement), on the gateway's environment, once the gateway's processes have stopped."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from bench import _procs
from bench._drivers import run_load
from bench._job_floor_actor import DONE_KEY, finished
from bench._procs import Proc


def run_floor(env: dict[str, str], jobs: int, size: str, submitters: int, processes: int, threads: int,
              timeout: float) -> list[list[Any]]:
    client = redis.Redis.from_url(env["HELYX_REDIS_URL"])
    client.delete(DONE_KEY)
    port = _procs.free_port()
    api = Proc("floor-api", [str(_procs.VENV_BIN / "uvicorn"), "bench._job_floor_app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--no-access-log", "--log-level", "warning",
                             *_procs.uvicorn_http()], env)
    # as `helyx worker` runs Dramatiq (workers.runner): its poll interval, HELYX_WORKER_POLL_MS's default
    workers = Proc("floor-workers", [_procs.PYTHON, "-m", "dramatiq", "bench._job_floor_actor", "--processes",
                                     str(processes), "--threads", str(threads)],
                   {**env, "dramatiq_worker_timeout": "50"})
    try:
        _procs.wait_http(port, "/healthz", proc=api)
        deadline = time.monotonic() + 60
        while len(_procs.dramatiq_workers(workers.pid)) < processes and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # the worker processes' consumers up
        body = json.dumps({"model": "nano-banana-pro", "prompt": "a lighthouse at dawn", "size": size})
        raw = (f"POST /api/v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}")
        worker_pids = _procs.dramatiq_workers(workers.pid)
        api_pids = [api.pid, *_procs.children(api.pid)]
        cpu = {p: _procs.cpu_seconds(p) for p in [*worker_pids, *api_pids, *_procs.pids_named("redis-server")]}
        machine = _procs.machine_cpu()
        t0 = time.time()
        res = run_load("submit", {"port": port, "raw": raw, "count": jobs, "connections": submitters,
                                  "max_seconds": 300})["results"]
        t_submitted = time.time()
        accepted = sum(1 for r in res if r[2] == 202)
        while client.llen(DONE_KEY) < accepted and time.time() - t0 < timeout:
            time.sleep(0.02)
        done_at = time.time()
        busy = _procs.busy_percent(machine, _procs.machine_cpu())
        used = {p: _procs.cpu_seconds(p) - c for p, c in cpu.items()}
        rows = finished(client)
    finally:
        workers.stop(timeout=15)
        api.stop()
        client.close()
    n = max(1, len(rows))
    first, last = min(r[1] for r in rows), max(r[3] for r in rows)
    return [
        ["floor: jobs submitted (202) / finished", f"{accepted} / {len(rows)}"],
        ["floor: submissions/s (client, 202s)", accepted / (t_submitted - t0)],
        ["floor: jobs/s end to end (first created -> last finished)", len(rows) / (last - first)],
        ["floor: submit->finished p50 ms", _procs.pct([(r[3] - r[1]) * 1e3 for r in rows], 50)],
        ["floor: API CPU ms per job", sum(used[p] for p in api_pids) / n * 1e3],
        ["floor: workers CPU ms per job", sum(used[p] for p in worker_pids) / n * 1e3],
        ["floor: Redis CPU ms per job",
         sum(v for p, v in used.items() if p not in (*api_pids, *worker_pids)) / n * 1e3],
        ["floor: machine busy %", busy],
        ["floor: machine CPU ms per job", busy / 100 * (os.cpu_count() or 1) * (done_at - t0) / n * 1e3],
    ]
