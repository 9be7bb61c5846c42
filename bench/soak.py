"""A bounded load soak of the production shape, then an exact audit of the money.

    .venv/bin/python -m bench.soak                      # 180 s at 50 req/s (the default)
    .venv/bin/python -m bench.soak --seconds 30         # a quick run
    .venv/bin/python -m bench.soak --rate 80 --seconds 600 --accounts 40

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis on 127.0.0.1:6379. It drops
and creates the database `helyx_soak` (`--db`, always a helyx_soak* name) and flushes Redis db 12
(`--redis-db`), and leaves both as they are at the end for inspection. Exit status 0 when every
check passes, 1 when one fails (the reason is printed), 2 when the stack does not start.

The stack: `helyx migrate`, then the API as `helyx serve --workers 2` (uvicorn, 2 processes, with
HELYX_REDIS_URL) and two `helyx worker --processes 1 --threads 8` instances (Dramatiq on Redis), each
started through tests/integration/helpers_processes.py: its own process group under a watchdog that
SIGKILLs the group after a time limit or once this script is gone, and killed on any exit (Ctrl-C
and exceptions included). HELYX_SIMULATE=1 (every model simulated, no provider key is inherited),
HELYX_SIMULATED_JOB_SECONDS=0.05, HELYX_SIMULATED_CHAT_DELAY=0.02 s per streamed chunk (so a stream
lasts long enough to be cut mid-way). Rate limits are raised to 10^9 requests a minute for every
plan, so they never interfere; the per-account running-job caps keep their defaults (1/2/4/8).

Accounts (`--accounts`, default 20) come from the admin API, plans free, plus, pro, ultra, free in
turn. Half get a large top-up grant (scaled to the load, so they never run dry) and 4x the traffic;
a quarter get 2,000 credits (they spend the allowance, cross into the top-up, then run dry); a
quarter get nothing (they run dry on the allowance). Dry accounts answer 402, counted.

Load: one asyncio loop sends at a FIXED rate (open loop: request i leaves at t0 + i/rate whatever
the answers) to 127.0.0.1 only, each request for a random account (seeded, `--seed`):
  chat        plain completion; max_tokens set half the time
  stream      streamed completion read to data: [DONE]
  stream_cut  streamed completion the client closes after 1-3 content chunks
  image       POST /images/generations with Prefer: respond-async (202); 10% carry an
              Idempotency-Key, half of those sent twice at once (both must name one job)
  video       POST /videos (vo3, 4 s 1280x720), Plus accounts and up (an image for free ones)
Each job is then polled with GET /jobs/{id} every `--poll-interval` until it is terminal; 5% of
jobs are cancelled right after submission (POST /jobs/{id}/cancel: 200, or 409 if already done).
Polls and cancels come on top of the fixed rate.

After the window: every submission is awaited, every job polled to its end, and the database
waited on until no job is unfinished and no hold is open. Then checks (any failure: exit 1):
  * no 5xx anywhere; no status other than 200/202/402 on submissions (402 counted), 200 on polls,
    200/409 on cancels; no client error, no stream without [DONE]; all processes still alive;
  * every job terminal, none failed (the simulated provider does not fail);
  * per account: allowance + topup == sum(ledger amounts); held == 0 == sum(held deltas); no open
    hold; and -sum(settle amounts) == sum(generations.credits) + sum(jobs.charged) to the micro-credit;
  * per record: a generation's credits == its hold's charge, a job's charged == its hold's charge
    (== price when succeeded, 0 otherwise), no hold without its record, no expired hold;
  * the credits_charged a client was shown == the generation's credits, for every answer;
  * every cut stream has its generation row; idempotent twins name the same job;
  * the shared PostgreSQL and Redis stayed up: a monitor PINGs Redis, watches redis-server's process
    state (another session's fault test may SIGSTOP it) and PostgreSQL's connections (a restart);
  * no Traceback/ERROR line in the processes' logs.
Figures: requests by kind and status, latency p50/p99 per kind (client side, and job queue and run
times from the job rows), a timeline (per slice of the window: sent, 402, 5xx, p50/p99, in flight,
RSS), achieved rate, jobs/s, scheduling lag of the client, PostgreSQL connections, and peak RSS
(VmHWM) of every process started, children included (uvicorn's workers, Dramatiq's processes).
Holds still open at the end are listed, with py-spy dumps of the API processes when py-spy exists.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import _procs  # noqa: E402
from bench._soak_accounts import Account, create_accounts, default_big_grant  # noqa: E402
from bench._soak_audit import Audit, audit_database, diagnose_open_holds, wait_settled  # noqa: E402
from bench._soak_load import TERMINAL, Load, Stats  # noqa: E402
from bench._soak_memory import EnvMonitor, MemorySampler  # noqa: E402
from bench._soak_report import log_trouble, report  # noqa: E402
from tests.integration.helpers_processes import (  # noqa: E402
    HELYX,
    Processes,
    base_env,
    free_port,
    wait_dramatiq_workers,
    wait_ready,
)

REDIS_BASE = "redis://127.0.0.1:6379"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=50.0, help="submissions per second (fixed rate)")
    p.add_argument("--seconds", type=float, default=180.0, help="length of the load window")
    p.add_argument("--accounts", type=int, default=20)
    p.add_argument("--big-grant", type=int, help="credits granted to half the accounts (default: scaled to the load)")
    p.add_argument("--web-workers", type=int, default=2)
    p.add_argument("--worker-instances", type=int, default=2, help="`helyx worker` instances")
    p.add_argument("--worker-processes", type=int, default=1, help="--processes of each instance")
    p.add_argument("--worker-threads", type=int, default=8)
    p.add_argument("--job-seconds", type=float, default=0.05, help="HELYX_SIMULATED_JOB_SECONDS")
    p.add_argument("--chat-delay", type=float, default=0.02, help="HELYX_SIMULATED_CHAT_DELAY (per chunk)")
    p.add_argument("--poll-interval", type=float, default=0.1)
    p.add_argument("--cancel-fraction", type=float, default=0.05)
    p.add_argument("--job-deadline", type=float, default=300.0, help="a job unfinished after this fails")
    p.add_argument("--max-inflight", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--api-log-level", default="WARNING", help="INFO logs every request (slower, but evidence)")
    p.add_argument("--db", default="helyx_soak")
    p.add_argument("--redis-db", type=int, default=12)
    for kind, weight in (("chat", 45), ("stream", 25), ("cut", 8), ("image", 17), ("video", 5)):
        p.add_argument(f"--mix-{kind}", type=float, default=weight, help="relative weight")
    return p.parse_args(argv)


async def drive(args: argparse.Namespace, base: str, accounts: list[Account], mem: MemorySampler,
                env_monitor: EnvMonitor) -> tuple[Stats, float]:
    # Idle connections expire on the client before uvicorn's 5 s keep-alive timeout closes them, so a
    # request never goes out on a connection the server is closing at that moment (a ReadError).
    limits = httpx.Limits(max_connections=args.max_inflight + 200, max_keepalive_connections=200,
                          keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(120, connect=10), limits=limits,
                                 trust_env=False) as client:
        load = Load(args, client, accounts)

        async def sample_memory() -> None:
            while True:
                load.stats.inflight.append((time.perf_counter(), len(load.inflight)))
                await asyncio.to_thread(mem.sample)
                await asyncio.sleep(2)

        mem.sample(mark_start=True)
        sampler = asyncio.create_task(sample_memory())
        stop = threading.Event()
        watching = asyncio.create_task(asyncio.to_thread(env_monitor.run, stop))
        try:
            window = await load.run()
            print(f"load window over after {window:.1f} s; draining {len(load.inflight)} requests and "
                  f"{len(load.pollers)} job pollers", flush=True)
            await load.drain(args.job_deadline + 60)
        finally:
            sampler.cancel()
            stop.set()
            await watching
        return load.stats, window


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the soak like Ctrl-C: through the finally that kills the stack


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    load_avg = os.getloadavg()
    db_url = _procs.fresh_pg_database(args.db, prefix="helyx_soak")
    redis_url = f"{REDIS_BASE}/{args.redis_db}"
    _procs.flush_redis(redis_url, only_db=args.redis_db)
    workdir = Path(tempfile.mkdtemp(prefix="helyx-soak-"))
    admin = secrets.token_hex(16)
    big = 10**9
    env = base_env(
        database_url=db_url, redis_url=redis_url, simulate="1", simulated_job_seconds=args.job_seconds,
        simulated_chat_delay=args.chat_delay, storage_dir=workdir / "files", secret_key=secrets.token_hex(32),
        admin_token=admin, log_level="WARNING", rate_limit_free=big, rate_limit_plus=big, rate_limit_pro=big,
        rate_limit_ultra=big,
    )
    print(f"soak: {args.rate:g} req/s for {args.seconds:g} s, {args.accounts} accounts; database {args.db}, "
          f"Redis db {args.redis_db}, logs in {workdir}\n"
          f"      API: helyx serve --workers {args.web_workers}; {args.worker_instances} x helyx worker --processes "
          f"{args.worker_processes} --threads {args.worker_threads}; HELYX_SIMULATE=1, simulated job "
          f"{args.job_seconds:g} s, chat chunk delay {args.chat_delay:g} s; rate limits raised to 10^9/min "
          f"(running-job caps at their defaults)", flush=True)
    audit = Audit()
    with Processes(workdir, max_seconds=args.seconds + args.job_deadline + 900) as procs:
        try:
            import subprocess

            subprocess.run([HELYX, "migrate"], env=env, cwd=workdir, check=True, timeout=120,
                           stdout=subprocess.DEVNULL)
            port = free_port()
            api = procs.start("api", [HELYX, "serve", "--host", "127.0.0.1", "--port", str(port),
                                      "--workers", str(args.web_workers)],
                              {**env, "HELYX_LOG_LEVEL": args.api_log_level}, port)
            wait_ready(api, 60)
            for n in range(args.worker_instances):
                procs.start(f"worker{n + 1}", [HELYX, "worker", "--processes", str(args.worker_processes),
                                               "--threads", str(args.worker_threads)], env)
            wait_dramatiq_workers(redis_url, args.worker_instances * args.worker_processes, timeout=60)
            accounts = create_accounts(api.url, admin, args.accounts, args.big_grant or default_big_grant(args))
        except Exception as exc:  # noqa: BLE001 - the stack did not come up: say why, exit 2
            print(f"soak: the stack did not start: {exc}", file=sys.stderr)
            return 2
        mem = MemorySampler(procs)
        cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        env_monitor = EnvMonitor(db_url, redis_url, args.db)
        stats, window = asyncio.run(drive(args, api.url, accounts, mem, env_monitor))
        cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0
        unfinished, open_holds = wait_settled(db_url, 120)
        mem.sample()
        if open_holds:
            diagnose_open_holds(db_url, procs, workdir)
        print("\n## Checks\n")
        audit.check(not env_monitor.pg_failures and not env_monitor.redis_frozen and not env_monitor.redis_failures,
                    "the shared PostgreSQL and Redis stayed up (else another session's fault test spoilt the run)",
                    f"PostgreSQL errors {env_monitor.pg_failures[:3]}, Redis stopped in {env_monitor.redis_frozen}"
                    f" samples, {env_monitor.redis_failures} failed PINGs")
        audit.check(not [1 for (_, s), _n in stats.status.items() if isinstance(s, int) and s >= 500],
                    "no 5xx answer", {k: n for k, n in stats.status.items() if isinstance(k[1], int) and k[1] >= 500})
        unexpected = {f"{k} {s}": n for (k, s), n in stats.status.items() if (k, s) in stats.samples}
        audit.check(not unexpected, "no unexpected status or client error", unexpected)
        for key, texts in stats.samples.items():
            print(f"      e.g. {key}: {texts[0]}")
        audit.check(stats.incomplete_streams == 0, "every uncut stream ended with [DONE]", stats.incomplete_streams)
        audit.check(stats.twins["different jobs"] == 0, "idempotent twins never made two jobs", dict(stats.twins))
        pending = [j.id for j in stats.jobs.values() if j.final not in TERMINAL]
        audit.check(not pending, f"every job polled to a terminal status ({len(stats.jobs)} jobs)", pending[:5])
        audit.check(unfinished == 0 and open_holds == 0, "database settled: no unfinished job, no open hold",
                    f"{unfinished} unfinished, {open_holds} open holds")
        dead = [p.name for p in procs.started if not p.alive()]
        audit.check(not dead, "every process alive at the end", dead)
        facts = audit_database(db_url, stats, audit)
        trouble = log_trouble(procs)
        audit.check(not trouble, "no Traceback/ERROR line in the processes' logs", f"{len(trouble)}: {trouble[:5]}")
        report(args, stats, window, facts, mem, cpu, load_avg, accounts, env_monitor)
    print(f"\nsoak: {'FAILED: ' + '; '.join(audit.failures) if audit.failures else 'all checks passed'}"
          f" (logs in {workdir}, database {args.db} kept)")
    return 1 if audit.failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("soak: interrupted; every process it started has been killed", file=sys.stderr)
        sys.exit(130)
