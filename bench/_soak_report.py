"""bench/soak.py's printed report: responses, latencies, a timeline, throughput, accounts, memory."""

from __future__ import annotations

import argparse
import os
import re
from collections import defaultdict
from typing import Any

from bench import _procs
from bench._procs import pct
from bench._soak_accounts import Account
from bench._soak_load import SUBMISSIONS, Stats
from bench._soak_memory import EnvMonitor, MemorySampler
from tests.integration.helpers_processes import Processes


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

