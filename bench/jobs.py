"""Media jobs end to end: image jobs on the simulated provider at zero delay, through real
`helyx worker` processes (Dramatiq on Redis db 13) on PostgreSQL (database helyx_bench_jobs).

    .venv/bin/python -m bench.jobs                      # 1,000 jobs, 256x256, 2 worker processes
    .venv/bin/python -m bench.jobs --jobs 300 --no-profile

Set-up: HELYX_SIMULATE=1, HELYX_SIMULATED_JOB_SECONDS=0, images of `--size` (default 256x256),
an ultra account (`helyx account create` + `helyx credits grant`; with `--accounts N`, N-1 more,
and the burst's submissions take their keys in turn), HELYX_JOBS_RUNNING_ULTRA raised
to 10,000 so the per-account running cap never throttles the benchmark, rate limits raised; the
API is `uvicorn api.main:app` (`--web-workers`, default 1), the workers `helyx worker --processes 2`
(8 threads each, the default).

Measured:
  * burst: `--jobs` submissions with `Prefer: respond-async` over `--submitters` connections;
    submissions/s, jobs/s end to end (first created_at to last finished_at, from the job rows),
    submit->succeeded p50/p99 (finished_at - created_at, the server's own clocks); beside it, the
    same-run reference: the simulated provider's PNG rendered alone in as many processes;
  * light load: one job at a time, polled with GET /jobs/{id} every 2 ms: server-side and
    client-observed submit->succeeded;
  * GET /jobs/{id} requests/s at c=64 (wrk), beside GET /healthz (the framework's floor);
  * peak RSS of every worker process; optionally a py-spy profile of one worker process;
  * the job floor (`--floor`, on by default; bench/_job_floor.py): the same burst once the
    gateway's processes have stopped, through the same web stack, broker, PNG and storage with
    every database statement cut out (no key lookup, rate limit, hold, job row, claim or success).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import _procs
from bench._drivers import run_load, run_wrk
from bench._job_floor import run_floor
from bench._jobs_profile import API_ANCHORS, profile_gil, summarize
from bench._procs import Proc
from bench._profile import GENERIC

DB = "helyx_bench_jobs"


class Stack:
    def __init__(self, web_workers: int, worker_processes: int, worker_threads: int, accounts: int = 1) -> None:
        self.db_url = _procs.fresh_pg_database(DB)
        _procs.flush_redis()
        big = "1000000000"
        self.env = _procs.helyx_env(
            HELYX_DATABASE_URL=self.db_url, HELYX_REDIS_URL=_procs.REDIS_URL, HELYX_SIMULATE="1",
            HELYX_SIMULATED_JOB_SECONDS="0", HELYX_STORAGE_DIR=str(_procs.WORKDIR / "files"),
            HELYX_SECRET_KEY="bench-" + "0" * 58, HELYX_LOG_LEVEL="WARNING", HELYX_JOBS_RUNNING_ULTRA="10000",
            HELYX_RATE_LIMIT_FREE=big, HELYX_RATE_LIMIT_PLUS=big, HELYX_RATE_LIMIT_PRO=big, HELYX_RATE_LIMIT_ULTRA=big,
        )
        subprocess.run([_procs.HELYX, "migrate"], env=self.env, cwd=_procs.ROOT, check=True, capture_output=True)
        made = _procs.run_json([_procs.HELYX, "account", "create", "jobs@bench.local", "--plan", "ultra"], self.env)
        self.account_id, self.key = made["account_id"], made["api_key"]
        _procs.run_json([_procs.HELYX, "credits", "grant", self.account_id, "100000000"], self.env)
        self.keys = [self.key, *_procs.more_accounts(self.db_url, accounts - 1, "jobs")]
        self.port = _procs.free_port()
        self.api = Proc("jobs-api", [str(_procs.VENV_BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1",
                                     "--port", str(self.port), "--workers", str(web_workers), "--no-access-log",
                                     "--log-level", "warning", *_procs.uvicorn_http()], self.env)
        self.workers = Proc("helyx-worker", [_procs.HELYX, "worker", "--processes", str(worker_processes),
                                             "--threads", str(worker_threads)], self.env)
        _procs.wait_http(self.port, "/healthz", proc=self.api)
        deadline = time.monotonic() + 60
        while len(self.worker_pids()) < worker_processes and time.monotonic() < deadline:
            time.sleep(0.2)

    def worker_pids(self) -> list[int]:
        """The processes that run jobs: the leaves under `helyx worker` (its supervisor and
        Dramatiq's main process only watch them)."""
        return _procs.dramatiq_workers(self.workers.pid)

    def raw_submit(self, size: str, key: str | None = None) -> str:
        body = json.dumps({"model": "nano-banana-pro", "prompt": "a lighthouse at dawn", "size": size})
        return (f"POST /api/v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Authorization: Bearer {key or self.key}\r\nContent-Type: application/json\r\n"
                "Prefer: respond-async\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}")

    def raw_get(self, path: str) -> str:
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {self.key}\r\n\r\n"

    def connect(self, autocommit: bool = False) -> Any:
        """A psycopg connection, retried: the shared server may be out of connection slots a moment."""
        import psycopg

        for attempt in range(30):
            try:
                return psycopg.connect(self.db_url, autocommit=autocommit)
            except psycopg.OperationalError:
                if attempt == 29:
                    raise
                time.sleep(1)
        raise AssertionError("unreachable")

    def rows(self, ids: list[str]) -> list[tuple[str, str, float, float | None, float | None]]:
        with self.connect() as conn:
            return conn.execute("SELECT id, status, created_at, started_at, finished_at FROM jobs WHERE id = ANY(%s)",
                                (ids,)).fetchall()

    def wait_done(self, ids: list[str], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self.connect(autocommit=True) as conn:
            while time.monotonic() < deadline:
                left = conn.execute("SELECT COUNT(*) FROM jobs WHERE id = ANY(%s) AND status IN ('queued', 'running')",
                                    (ids,)).fetchone()[0]  # type: ignore[index]
                if left == 0:
                    return time.time()
                time.sleep(0.05)
        raise TimeoutError(f"{left} job(s) still unfinished after {timeout:g} s")

    def pg_counters(self) -> dict[str, float]:
        """This database's commits and row writes, and the server's WAL (shared: others' too)."""
        with self.connect(autocommit=True) as conn:
            db = conn.execute("SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database "
                              "WHERE datname = %s", (DB,)).fetchone()
            wal = conn.execute("SELECT wal_records, wal_bytes FROM pg_stat_wal").fetchone()
            # the flushes are counted in pg_stat_io from PostgreSQL 18
            flushes = conn.execute("SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_io WHERE object = 'wal'"
                                   if conn.info.server_version >= 180000 else
                                   "SELECT wal_sync FROM pg_stat_wal").fetchone()
            wal = (*wal, *flushes)
        names = ["commits", "rows inserted", "rows updated", "rows deleted", "WAL records", "WAL bytes", "WAL flushes"]
        return dict(zip(names, [float(v) for v in (*db, *wal)], strict=True))

    def stop(self) -> None:
        self.workers.stop(timeout=15)
        self.api.stop()
        _procs.drop_pg_database(DB)


def burst(stack: Stack, args: argparse.Namespace) -> tuple[list[list[Any]], list[str]]:
    out = _procs.WORKDIR / "jobs-worker-profile.txt"
    spy = api_spy = None
    api_out = _procs.WORKDIR / "jobs-api-burst-profile.txt"
    if args.profile and (_procs.VENV_BIN / "py-spy").exists() and stack.worker_pids():
        spy = profile_gil(stack.worker_pids()[0], args.profile_seconds, out)
        api_spy = profile_gil(stack.api.pid, args.profile_seconds, api_out)
    split_before = {p: _procs.cpu_split(p) for p in [stack.api.pid, *_procs.children(stack.api.pid),
                                                     *stack.worker_pids()]}
    services = {p: _procs.cpu_seconds(p) for p in _procs.pids_named("postgres", "redis-server")}
    machine = _procs.machine_cpu()
    counters = stack.pg_counters()
    t0 = time.time()
    res = run_load("submit", {"port": stack.port, "raws": [stack.raw_submit(args.size, k) for k in stack.keys],
                              "count": args.jobs,
                              "connections": args.submitters, "max_seconds": 300})["results"]
    t_submitted = time.time()
    ids = [r[3] for r in res if r[2] == 202]
    refused = [r for r in res if r[2] != 202]
    done_at = stack.wait_done(ids, args.timeout)
    busy = _procs.busy_percent(machine, _procs.machine_cpu())
    split_after = {p: _procs.cpu_split(p) for p in split_before}
    cpu = {p: sum(split_after[p]) - sum(c) for p, c in split_before.items()}
    kernel = {p: split_after[p][1] - c[1] for p, c in split_before.items()}
    # a backend opened during the burst counts whole (it started in it); one that ended is lost
    service_cpu = {p: _procs.cpu_seconds(p) - services.get(p, 0.0)
                   for p in _procs.pids_named("postgres", "redis-server")}
    redis_pids = set(_procs.pids_named("redis-server"))
    time.sleep(1.2)  # backends publish their statistics at most once a second
    after = stack.pg_counters()
    rows = stack.rows(ids)
    lat = [(f - c) * 1e3 for _, s, c, _, f in rows if s == "succeeded" and f]
    queue_wait = [(st - c) * 1e3 for _, s, c, st, f in rows if s == "succeeded" and st]
    statuses = Counter(r[1] for r in rows)
    first, last = min(r[2] for r in rows), max(r[4] or 0 for r in rows)
    api_cpu = sum(v for p, v in cpu.items() if p not in stack.worker_pids())
    worker_cpu = sum(v for p, v in cpu.items() if p in stack.worker_pids())
    table = [
        ["jobs submitted (202) / refused", f"{len(ids)} / {len(refused)}"],
        ["statuses", dict(statuses)],
        ["submissions/s (client, 202s)", len(ids) / (t_submitted - t0)],
        ["submit p50 / p99 ms (client: POST -> 202)",
         f"{_procs.pct([(r[1] - r[0]) * 1e3 for r in res], 50):.1f} / "
         f"{_procs.pct([(r[1] - r[0]) * 1e3 for r in res], 99):.1f}"],
        ["jobs/s end to end (first created -> last finished)", len(lat) / (last - first)],
        ["jobs/s, client view (first POST -> all seen done)", len(lat) / (done_at - t0)],
        ["submit->succeeded p50 ms (row: finished - created)", _procs.pct(lat, 50)],
        ["submit->succeeded p99 ms", _procs.pct(lat, 99)],
        ["  of which queued (started - created) p50 / p99 ms",
         f"{_procs.pct(queue_wait, 50):.1f} / {_procs.pct(queue_wait, 99):.1f}"],
        ["API CPU ms per job (all uvicorn processes)", api_cpu / max(1, len(lat)) * 1e3],
        ["workers CPU ms per job (all worker processes)", worker_cpu / max(1, len(lat)) * 1e3],
        ["  of which system (kernel) time, ms per job: API / workers",
         f"{sum(v for p, v in kernel.items() if p not in stack.worker_pids()) / max(1, len(lat)) * 1e3:.2f} / "
         f"{sum(v for p, v in kernel.items() if p in stack.worker_pids()) / max(1, len(lat)) * 1e3:.2f}"],
        ["PostgreSQL CPU ms per job (its processes)",
         sum(v for p, v in service_cpu.items() if p not in redis_pids) / max(1, len(lat)) * 1e3],
        ["Redis CPU ms per job", sum(v for p, v in service_cpu.items() if p in redis_pids) / max(1, len(lat)) * 1e3],
        ["machine busy % during the burst", busy],
        ["machine CPU ms per job (busy x cores x burst time / jobs)",
         busy / 100 * (os.cpu_count() or 1) * (done_at - t0) / max(1, len(lat)) * 1e3],
    ]
    table.append(["PostgreSQL per job: " + ", ".join(after), " / ".join(
        f"{(after[k] - counters[k]) / max(1, len(lat)):.1f}" for k in after)])
    alone, alone_cpu_ms = render_alone(args.size, args.worker_processes)
    table += [
        [f"direct: the simulated provider alone (render_png in {args.worker_processes} processes, nothing else), "
         "images/s", alone],
        ["  its CPU ms per image", alone_cpu_ms],
        ["ratio: jobs/s end to end / direct", len(lat) / (last - first) / alone],
    ]
    tables = []
    if spy is not None:
        spy.wait(timeout=args.profile_seconds + 60)
        if out.exists():
            tables.append(_procs.table(f"py-spy --gil, one worker process during the burst (GIL-holding samples; "
                                       f"{args.profile_seconds:g} s)", ["phase", "samples", "%"], summarize(out), 1))
            if args.keep_profile:
                Path(args.keep_profile).write_text(out.read_text())
    if api_spy is not None:
        api_spy.wait(timeout=args.profile_seconds + 60)
        if api_out.exists():
            tables.append(_procs.table(f"py-spy --gil, the API process during the burst ({args.profile_seconds:g} s)",
                                       ["phase (deepest matching frame)", "samples", "%"],
                                       summarize(api_out, API_ANCHORS, GENERIC), 1))
            if args.keep_profile:
                Path(args.keep_profile + ".api").write_text(api_out.read_text())
    if refused:
        print(f"  refused: {refused[:3]}")
    return table, tables


_RENDER_ALONE = """
import sys, time
from common.providers.simulated_media import render_png
width, height, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
render_png("warm-up", width, height)
n, t0, cpu0 = 0, time.monotonic(), time.process_time()
while time.monotonic() - t0 < seconds:
    render_png("a lighthouse at dawn", width, height)
    n += 1
print(n, time.monotonic() - t0, time.process_time() - cpu0)
"""


def render_alone(size: str, processes: int, seconds: float = 3.0) -> tuple[float, float]:
    """The same-run reference for the burst: what the job's own work (the simulated provider's
    PNG, the same prompt and size) reaches in as many processes, with nothing else around it.
    (images/s, CPU ms per image)."""
    width, height = size.split("x")
    procs = [subprocess.Popen([_procs.PYTHON, "-c", _RENDER_ALONE, width, height, str(seconds)], cwd=_procs.ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    results = [[float(v) for v in p.communicate(timeout=seconds + 60)[0].split()] for p in procs]
    images = sum(r[0] for r in results)
    return images / max(r[1] for r in results), sum(r[2] for r in results) / images * 1e3


def light(stack: Stack, args: argparse.Namespace) -> list[list[Any]]:
    res = run_load("light", {"port": stack.port, "submit_raw": stack.raw_submit(args.size),
                             "poll_raw": stack.raw_get("/api/v1/jobs/JOB_ID"), "count": args.light_jobs,
                             "interval": 0.002, "gap": 0.05, "max_seconds": 120})["jobs"]
    refused = [j for j in res if not j[4]]
    res = [j for j in res if j[4]]
    rows = {r[0]: r for r in stack.rows([j[4] for j in res])}
    server = [(rows[j[4]][4] - rows[j[4]][2]) * 1e3 for j in res if rows[j[4]][1] == "succeeded"]
    queued = [(rows[j[4]][3] - rows[j[4]][2]) * 1e3 for j in res if rows[j[4]][1] == "succeeded"]
    client = [(j[2] - j[0]) * 1e3 for j in res if j[3] == "succeeded"]
    submit = [(j[1] - j[0]) * 1e3 for j in res]
    return [
        [f"light load ({len(res)} jobs, one at a time; {len(refused)} refused)", "p50", "p99"],
        ["POST -> 202 ms (client)", _procs.pct(submit, 50), _procs.pct(submit, 99)],
        ["submit->succeeded ms (row: finished - created)", _procs.pct(server, 50), _procs.pct(server, 99)],
        ["of which queued ms (row: started - created)", _procs.pct(queued, 50), _procs.pct(queued, 99)],
        ["submit->succeeded ms (client: POST sent -> poll saw it)", _procs.pct(client, 50), _procs.pct(client, 99)],
    ]


def polls(stack: Stack, args: argparse.Namespace, job_id: str) -> list[list[Any]]:
    rows = []
    targets = {"GET /api/v1/jobs/{id} (succeeded, 1 file)": stack.raw_get(f"/api/v1/jobs/{job_id}"),
               "GET /healthz (framework floor)": stack.raw_get("/healthz")}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    pids = [stack.api.pid, *_procs.children(stack.api.pid)]
    for round_ in range(args.load_rounds):
        for name, raw in targets.items():
            spy = None
            if round_ == 0 and name.startswith("GET /api") and args.profile and len(pids) == 1:
                spy = profile_gil(pids[0], args.load_seconds - 1, _procs.WORKDIR / "jobs-api-profile.txt")
            before = sum(_procs.cpu_seconds(p) for p in pids)
            r = run_wrk(stack.port, raw, args.connections, args.load_seconds)
            r["cpu_ms"] = (sum(_procs.cpu_seconds(p) for p in pids) - before) / max(1, r["requests"]) * 1e3
            runs[name].append(r)
            if spy is not None:
                spy.wait(timeout=60)
            print(f"  {name:45} {r['rps']:8.0f} req/s  non-200 {r['non_200']}", flush=True)
    for name, rs in runs.items():
        rates = [r["rps"] for r in rs]
        rows.append([name, _procs.median(rates), min(rates), max(rates), _procs.median([r["p50"] for r in rs]),
                     _procs.median([r["p99"] for r in rs]), _procs.median([r["cpu_ms"] for r in rs]),
                     sum(r["non_200"] for r in rs)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--submitters", type=int, default=16, help="concurrent submitting connections")
    parser.add_argument("--accounts", type=int, default=1, help="the burst's jobs spread over this many accounts "
                        "(1: every claim and settlement queues on one account's row)")
    parser.add_argument("--light-jobs", type=int, default=50)
    parser.add_argument("--web-workers", type=int, default=1)
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--load-seconds", type=float, default=8.0)
    parser.add_argument("--load-rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="for the burst to finish")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="the same burst again through the job floor (bench/_job_floor.py), after the gateway")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--keep-profile", help="copy py-spy's raw stacks here (.api: the API in the burst,"
                        " .polls: under GET /jobs/{id})")
    parser.add_argument("--output", help="also write the tables (Markdown) to this file")
    args = parser.parse_args()
    _procs.install_signal_handlers()
    note = _procs.machine_note()
    print(f"# bench.jobs: {note}", flush=True)
    _procs.wait_for_postgres()
    stack = Stack(args.web_workers, args.worker_processes, args.worker_threads, args.accounts)
    tables = []
    try:
        warm = run_load("light", {"port": stack.port, "submit_raw": stack.raw_submit(args.size),
                                  "poll_raw": stack.raw_get("/api/v1/jobs/JOB_ID"), "count": 5, "interval": 0.01,
                                  "gap": 0.0})["jobs"]
        burst_rows, profile_tables = burst(stack, args)
        tables.append(_procs.table(f"burst: {args.jobs} image jobs ({args.size}) of {args.accounts} account(s), "
                                   f"{args.submitters} submitters, "
                                   f"{args.worker_processes} worker processes x {args.worker_threads} threads, "
                                   f"{args.web_workers} API process(es)", ["measure", "value"], burst_rows))
        tables += profile_tables
        light_rows = light(stack, args)
        tables.append(_procs.table("light load", light_rows[0], light_rows[1:]))
        poll_rows = polls(stack, args, next(j[4] for j in warm if j[4]))
        mem = [[("dramatiq worker" if p in stack.worker_pids() else "uvicorn"), p, *_procs.memory_mb(p)]
               for p in [*stack.worker_pids(), stack.api.pid, *_procs.children(stack.api.pid)]]
        mem += [["dramatiq main process", p, *_procs.memory_mb(p)]
                for p in _procs.children(stack.workers.pid) if p not in stack.worker_pids()]
        mem.append(["helyx worker (supervisor)", stack.workers.pid, *_procs.memory_mb(stack.workers.pid)])
        if args.floor:
            stack.workers.stop(timeout=15)
            stack.api.stop()
            floor = run_floor(stack.env, args.jobs, args.size, args.submitters, args.worker_processes,
                              args.worker_threads, args.timeout)
            gateway_rate = next(r[1] for r in burst_rows if r[0].startswith("jobs/s end to end"))
            floor += [["ratio: gateway jobs/s / floor jobs/s", gateway_rate / floor[2][1]]]
            tables.append(_procs.table("the job floor: the same burst with every database statement cut out "
                                       "(bench/_job_floor.py)", ["measure", "value"], floor))
    finally:
        stack.stop()
    tables.append(_procs.table(f"polling at c={args.connections} (wrk, {args.load_rounds} x {args.load_seconds:g} s, "
                               "alternating; median)",
                               ["request", "req/s", "min", "max", "p50 ms", "p99 ms", "API CPU ms/request",
                                "non-200"], poll_rows))
    api_profile = _procs.WORKDIR / "jobs-api-profile.txt"
    if api_profile.exists():
        tables.append(_procs.table("py-spy, the API process under GET /jobs/{id} at c=64 (GIL-holding samples)",
                                   ["phase (deepest matching frame)", "samples", "%"],
                                   summarize(api_profile, API_ANCHORS, GENERIC), 1))
        if args.keep_profile:
            Path(args.keep_profile + ".polls").write_text(api_profile.read_text())
    tables.append(_procs.table("memory, MB", ["process", "pid", "RSS now", "peak RSS (VmHWM)"], mem, 1))
    if args.output:
        Path(args.output).write_text(f"# bench.jobs: {note}\n" + "\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
