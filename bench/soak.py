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
import json
import os
import random
import re
import resource
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import _procs  # noqa: E402
from bench._procs import pct  # noqa: E402
from bench._soak_audit import Audit, audit_database, diagnose_open_holds, wait_settled  # noqa: E402
from bench._soak_memory import EnvMonitor, MemorySampler  # noqa: E402
from tests.integration.helpers_processes import (  # noqa: E402
    HELYX,
    Processes,
    base_env,
    free_port,
    wait_dramatiq_workers,
    wait_ready,
)

REDIS_BASE = "redis://127.0.0.1:6379"
PLANS = ("free", "plus", "pro", "ultra", "free")
FREE_MODELS = ("gpt-4o", "helyx-3.5", "claude-3-5-sonnet", "kimi-k2.6", "minimax-m2.7")
PLUS_MODELS = (*FREE_MODELS, "claude-4.7", "grok-pro")
TERMINAL = ("succeeded", "failed", "canceled")
SUBMISSIONS = ("chat", "stream", "stream_cut", "image", "video")
WORDS = ("lighthouse", "ledger", "river", "quantum", "harbor", "violet", "engine", "meadow", "cipher",
         "falcon", "orbit", "lantern", "granite", "whisper", "copper", "tide", "saffron", "atlas", "ember",
         "prism", "thicket", "nomad", "summit")


# --- the stack ---------------------------------------------------------------------------------

@dataclass
class Account:
    index: int
    id: str
    key: str
    plan: str
    grant: int  # credits

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


BIG_WEIGHT = 4  # a funded account gets this many times the traffic of one meant to run dry


def funding(i: int, big_grant: int) -> int:
    """Half the accounts are well funded, a quarter get a small grant (they cross from the
    allowance into the top-up, then run dry), a quarter none (they run dry on the allowance)."""
    return (big_grant, big_grant, 2_000, 0)[i % 4]


def default_big_grant(args: argparse.Namespace) -> int:
    """Enough that a well-funded account never runs dry: ~200 credits a request were spent in
    practice (videos dominate), so 400 a request for its share of the traffic."""
    weights = [BIG_WEIGHT if i % 4 < 2 else 1 for i in range(args.accounts)]
    share = BIG_WEIGHT / sum(weights)
    return max(10_000, int(args.rate * args.seconds * share * 400) // 1000 * 1000)


def create_accounts(base: str, admin_token: str, count: int, big_grant: int) -> list[Account]:
    made = []
    auth = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30, trust_env=False) as client:
        for i in range(count):
            plan = PLANS[i % len(PLANS)]
            r = client.post("/admin/accounts", json={"email": f"soak{i}@soak.local", "plan": plan})
            r.raise_for_status()
            grant = funding(i, big_grant)
            if grant:
                client.post(f"/admin/accounts/{r.json()['account_id']}/credits",
                            json={"amount": grant, "reference": f"soak-{i}"}).raise_for_status()
            made.append(Account(i, r.json()["account_id"], r.json()["api_key"], plan, grant))
    return made


# --- the load ------------------------------------------------------------------------------------

@dataclass
class Job:
    id: str
    kind: str
    account: Account
    submitted: float
    final: str | None = None
    seen_done: float | None = None


@dataclass
class Stats:
    status: Counter[tuple[str, int | str]] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    samples: dict[tuple[str, int | str], list[str]] = field(default_factory=lambda: defaultdict(list))
    charges: dict[str, Decimal] = field(default_factory=dict)  # generation id -> credits shown
    cut_ids: list[str] = field(default_factory=list)
    cut_completed: int = 0
    incomplete_streams: int = 0
    stream_errors: int = 0
    jobs: dict[str, Job] = field(default_factory=dict)
    twins: Counter[str] = field(default_factory=Counter)
    lag: list[float] = field(default_factory=list)
    dropped: int = 0
    sent: int = 0
    done: int = 0
    t0: float = 0.0
    events: list[tuple[float, str, int | str, float]] = field(default_factory=list)  # start, kind, status, s
    inflight: list[tuple[float, int]] = field(default_factory=list)

    def client_error(self, kind: str, exc: Exception, start: float) -> None:
        seconds = time.perf_counter() - start
        self.record(kind, f"client:{type(exc).__name__}", seconds, f"after {seconds:.3f} s: {exc!r}")

    def record(self, kind: str, status: int | str, seconds: float, body: bytes | str = b"") -> None:
        if status == 402 and isinstance(body, bytes) and b'"insufficient_quota"' not in body:
            status = "402 without insufficient_quota"  # the SPEC's type for a balance that cannot cover
        self.status[(kind, status)] += 1
        self.events.append((time.perf_counter() - seconds, kind, status, seconds))
        if isinstance(status, int):  # a client-side error has no latency worth mixing in
            self.latency[kind].append(seconds)
        ok = {"poll": (200,), "cancel": (200, 409)}.get(kind, (200, 202, 402))
        if status not in ok and len(self.samples[(kind, status)]) < 3:
            text = body.decode(errors="replace") if isinstance(body, bytes) else body
            self.samples[(kind, status)].append(text[:300])


class Load:
    def __init__(self, args: argparse.Namespace, client: httpx.AsyncClient, accounts: list[Account]) -> None:
        self.args = args
        self.client = client
        self.accounts = accounts
        self.stats = Stats()
        big = max(a.grant for a in accounts)
        self.account_weights = [BIG_WEIGHT if a.grant == big and big > 2_000 else 1 for a in accounts]
        self.pollers: set[asyncio.Task[None]] = set()
        self.inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> float:
        """Send at the fixed rate for the window; returns the window's length in seconds."""
        args, loop = self.args, asyncio.get_running_loop()
        total = int(args.rate * args.seconds)
        weights = [args.mix_chat, args.mix_stream, args.mix_cut, args.mix_image, args.mix_video]
        t0 = loop.time()
        self.stats.t0 = time.perf_counter()
        for i in range(total):
            wait = t0 + i / args.rate - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                self.stats.lag.append(-wait)
            if len(self.inflight) >= args.max_inflight:
                self.stats.dropped += 1
                continue
            rnd = random.Random(args.seed * 1_000_003 + i)
            kind = rnd.choices(SUBMISSIONS, weights)[0]
            acct = rnd.choices(self.accounts, self.account_weights)[0]
            task = asyncio.create_task(self.one(i, kind, acct, rnd))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
            self.stats.sent += 1
        return loop.time() - t0

    async def drain(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        for group in (self.inflight, self.pollers):
            while group:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    for task in list(group):
                        task.cancel()
                    return
                await asyncio.wait(list(group), timeout=left)

    async def one(self, i: int, kind: str, acct: Account, rnd: random.Random) -> None:
        start = time.perf_counter()
        try:
            if kind in ("chat", "stream", "stream_cut"):
                await self.chat(kind, acct, rnd)
            elif kind == "video" and acct.plan != "free":
                await self.video(acct, rnd)
            else:
                await self.image(i, acct, rnd)
        except httpx.HTTPError as exc:
            self.stats.client_error(kind, exc, start)
        finally:
            self.stats.done += 1

    def _prompt(self, rnd: random.Random) -> str:
        return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, 60)))

    async def chat(self, kind: str, acct: Account, rnd: random.Random) -> None:
        body: dict[str, Any] = {"model": rnd.choice(PLUS_MODELS if acct.plan != "free" else FREE_MODELS),
                                "messages": [{"role": "user", "content": self._prompt(rnd)}]}
        if rnd.random() < 0.3:
            body["messages"].insert(0, {"role": "system", "content": "You are terse."})
        if rnd.random() < 0.5:
            body["max_tokens"] = rnd.randint(8, 256)
        start = time.perf_counter()
        if kind == "chat":
            r = await self.client.post("/api/v1/chat/completions", json=body, headers=acct.auth)
            self.stats.record(kind, r.status_code, time.perf_counter() - start, r.content)
            if r.status_code == 200:
                helyx = json.loads(r.content, parse_float=Decimal)["helyx"]
                self.stats.charges[helyx["generation_id"]] = Decimal(helyx["credits_charged"])
            return
        body["stream"] = True
        if rnd.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
        cut_after = rnd.randint(1, 3) if kind == "stream_cut" else None
        async with self.client.stream("POST", "/api/v1/chat/completions", json=body, headers=acct.auth) as r:
            if r.status_code != 200:
                self.stats.record(kind, r.status_code, time.perf_counter() - start, await r.aread())
                return
            await self._read_stream(kind, r, start, cut_after)

    async def _read_stream(self, kind: str, r: httpx.Response, start: float, cut_after: int | None) -> None:
        chunks, done, gen_id, final = 0, False, None, None
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if chunks == 0 and gen_id is None:
                self.stats.latency[f"{kind}_ttfb"].append(time.perf_counter() - start)
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[6:], parse_float=Decimal)
            if "error" in event:
                self.stats.stream_errors += 1
            gen_id = gen_id or event.get("id")
            if event.get("helyx"):
                final = event["helyx"]
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                chunks += 1
                if cut_after is not None and chunks >= cut_after:
                    break
        self.stats.record(kind, r.status_code, time.perf_counter() - start)
        if final is not None and done:
            self.stats.charges[final["generation_id"]] = Decimal(final["credits_charged"])
        if cut_after is not None:
            if done:
                self.stats.cut_completed += 1
            elif gen_id:
                self.stats.cut_ids.append(gen_id)
        elif not done:
            self.stats.incomplete_streams += 1

    async def image(self, i: int, acct: Account, rnd: random.Random) -> None:
        body = {"model": "nano-banana-pro", "prompt": self._prompt(rnd),
                "size": rnd.choice(("256x256", "256x256", "512x512")), "n": rnd.choice((1, 1, 1, 2))}
        headers = {**acct.auth, "Prefer": "respond-async"}
        twins = 1
        if rnd.random() < 0.10:
            headers["Idempotency-Key"] = f"soak-{self.args.seed}-{i}"
            twins = 2 if rnd.random() < 0.5 else 1
        start = time.perf_counter()
        sends = [self.client.post("/api/v1/images/generations", json=body, headers=headers) for _ in range(twins)]
        answers = await asyncio.gather(*sends)
        ids = set()
        for r in answers:
            self.stats.record("image", r.status_code, time.perf_counter() - start, r.content)
            if r.status_code == 202:
                ids.add(r.json()["id"])
        if twins == 2:
            codes = tuple(sorted(r.status_code for r in answers))
            self.stats.twins["same job" if codes == (202, 202) and len(ids) == 1 else
                             "different jobs" if len(ids) > 1 else f"statuses {codes}"] += 1
        for job_id in ids:
            self._track(Job(job_id, "image", acct, start), rnd)

    async def video(self, acct: Account, rnd: random.Random) -> None:
        body = {"model": "vo3", "prompt": self._prompt(rnd), "seconds": "4", "size": "1280x720"}
        start = time.perf_counter()
        r = await self.client.post("/api/v1/videos", json=body, headers=acct.auth)
        self.stats.record("video", r.status_code, time.perf_counter() - start, r.content)
        if r.status_code in (200, 201, 202):
            self._track(Job(r.json()["id"], "video", acct, start), rnd)

    def _track(self, job: Job, rnd: random.Random) -> None:
        if job.id in self.stats.jobs:
            return
        self.stats.jobs[job.id] = job
        task = asyncio.create_task(self.poll(job, cancel=rnd.random() < self.args.cancel_fraction))
        self.pollers.add(task)
        task.add_done_callback(self.pollers.discard)

    async def poll(self, job: Job, cancel: bool) -> None:
        deadline = job.submitted + self.args.job_deadline
        if cancel:
            start = time.perf_counter()
            try:
                r = await self.client.post(f"/api/v1/jobs/{job.id}/cancel", headers=job.account.auth)
                self.stats.record("cancel", r.status_code, time.perf_counter() - start, r.content)
            except httpx.HTTPError as exc:
                self.stats.client_error("cancel", exc, start)
        while time.perf_counter() < deadline:
            await asyncio.sleep(self.args.poll_interval)
            start = time.perf_counter()
            try:
                r = await self.client.get(f"/api/v1/jobs/{job.id}", headers=job.account.auth)
            except httpx.HTTPError as exc:
                self.stats.client_error("poll", exc, start)
                continue
            now = time.perf_counter()
            self.stats.record("poll", r.status_code, now - start, r.content)
            if r.status_code == 200 and r.json()["status"] in TERMINAL:
                job.final, job.seen_done = r.json()["status"], now
                self.stats.latency[f"{job.kind}_job_end_to_end"].append(now - job.submitted)
                return
        job.final = "client deadline passed"


# --- printing ------------------------------------------------------------------------------------

def table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    _procs.table(title, headers, rows, digits=1)


def timeline(stats: Stats, window: float, mem: MemorySampler) -> None:
    """Per slice of the window: what was sent then, how it was answered, and the processes' RSS,
    to tell a steady state from a slow degradation (queues, leaks)."""
    step = max(5.0, round(window / 12 / 5) * 5)
    rows = []
    for n in range(int(-(-window // step))):
        lo, hi = stats.t0 + n * step, stats.t0 + (n + 1) * step
        subs = [e for e in stats.events if lo <= e[0] < hi and e[1] in SUBMISSIONS]
        ok = [e[3] for e in subs if e[2] in (200, 202)]
        polls = [e[3] for e in stats.events if lo <= e[0] < hi and e[1] == "poll"]
        inflight = [n for t, n in stats.inflight if lo <= t < hi] or [0]
        rss = [r for t, r in mem.series if t < hi][-1:] or [{}]
        rows.append([f"{n * step:.0f}-{(n + 1) * step:.0f}", len(subs), sum(1 for e in subs if e[2] == 402),
                     sum(1 for e in subs if not isinstance(e[2], int) or e[2] >= 500),
                     pct(ok, 50) * 1000, pct(ok, 99) * 1000, pct(polls, 99) * 1000, max(inflight),
                     rss[0].get("api", 0) / 1024, rss[0].get("worker", 0) / 1024])
    table("Timeline (by when a request was sent)", ["s", "sent", "402", "5xx/err", "2xx p50 ms", "2xx p99 ms",
                                                    "poll p99 ms", "max in flight", "API RSS MB",
                                                    "workers RSS MB"], rows)


def report(args: argparse.Namespace, stats: Stats, window: float, facts: dict[str, Any], mem: MemorySampler,
           cpu: float, load_avg: tuple[float, ...], accounts: list[Account], env_monitor: EnvMonitor) -> None:
    kinds = sorted({k for k, _ in stats.status})
    statuses = sorted({s for _, s in stats.status}, key=str)
    table("Responses by kind and status", ["kind", *map(str, statuses), "total"],
          [[k, *(stats.status[(k, s)] for s in statuses), sum(stats.status[(k, s)] for s in statuses)]
           for k in kinds])
    table("Latency (client side, ms)", ["kind", "count", "p50", "p99", "max"],
          [[k, len(v), pct(v, 50) * 1000, pct(v, 99) * 1000, max(v) * 1000]
           for k, v in sorted(stats.latency.items()) if v])
    by_type: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for job_type, wait, run, total in facts["job_times"]:
        by_type[job_type].append((wait, run, total))
    timeline(stats, window, mem)
    table("Succeeded jobs, from the job rows (ms)", ["type", "count", "queued p50", "queued p99", "running p50",
                                                      "running p99", "created->finished p50", "p99"],
          [[t, len(v), *(pct([x[i] for x in v], p) * 1000 for i in range(3) for p in (50, 99))]
           for t, v in sorted(by_type.items())])
    submissions = sum(n for (k, _), n in stats.status.items() if k in SUBMISSIONS)
    everything = sum(stats.status.values())
    count, first, last = facts["job_span"]
    span = (last - first) if count else 0.0
    lag = stats.lag or [0.0]
    table("Throughput", ["figure", "value"], [
        ["target rate (req/s) x window (s)", f"{args.rate:g} x {args.seconds:g}"],
        ["submissions sent / answered", f"{stats.sent:,} / {submissions:,}"],
        ["achieved submission rate (req/s)", submissions / window],
        ["all requests incl. polls and cancels (req/s)", everything / window],
        ["dropped (more than --max-inflight in flight)", stats.dropped],
        ["client sends late: count, p99 ms, max ms",
         f"{len(stats.lag):,}, {pct(lag, 99) * 1000:.1f}, {max(lag) * 1000:.1f}"],
        ["jobs succeeded / span (s) / jobs per s", f"{count:,} / {span:.1f} / {count / span if span else 0:.2f}"],
        ["job attempts (attempts: jobs)", facts["attempts"]],
        ["402 answers (accounts run dry)", sum(n for (k, s), n in stats.status.items() if s == 402)],
        ["streams cut by the client / finished before the cut", f"{len(stats.cut_ids)} / {stats.cut_completed}"],
        ["cut streams' generation status", dict(facts["cut_status"])],
        ["streams ending in an error event", stats.stream_errors],
        ["idempotent twins", dict(stats.twins)],
        ["generations by status", facts["generation_status"]],
        ["jobs (type, status, count)", ", ".join(f"{t} {s} {n}" for t, s, n in facts["job_status"])],
        ["ledger entries by kind", facts["ledger_kinds"]],
        ["client CPU (s) / share of one core", f"{cpu:.1f} / {cpu / window * 100:.0f}%"],
        ["machine", f"{os.cpu_count()} CPUs, load average at start {load_avg[0]:.2f}, "
                    f"at end {os.getloadavg()[0]:.2f}"],
        *env_monitor.rows(),
    ])
    by_id = {a.id: a for a in accounts}
    table("Accounts (credits)", ["account", "plan", "grant", "allowance", "topup", "held", "settled",
                                 "generations", "jobs"],
          [[r[0], r[1], f"{a.grant:,}", r[2] / 1e6, r[3] / 1e6, r[4] / 1e6, r[7] / 1e6, r[11], r[12]]
           for r in facts["accounts"] for a in [by_id[r[0]]]])
    table("Memory of every process started (MB)", ["process", "pid", "RSS at load start", "RSS at end",
                                                    "peak (VmHWM)"],
          [[m.label, pid, m.start_kb / 1024, m.last_kb / 1024, m.peak_kb / 1024] for pid, m in mem.seen.items()])


def log_trouble(procs: Processes) -> list[str]:
    found = []
    for proc in procs.started:
        text = proc.log(tail=2_000_000)
        for match in re.finditer(r"^.*(Traceback|ERROR|CRITICAL).*$", text, re.MULTILINE):
            found.append(f"{proc.name}: {match.group(0)[:200]}")
    return found


# --- main ----------------------------------------------------------------------------------------

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
