"""bench/soak.py's process watch: every process it started, its RSS over time and its state."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench._procs import ROOT, pct
from tests.integration.helpers_processes import Processes


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, depth) of every descendant of `pid`, parents before their children."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent_of[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found: list[tuple[int, int]] = []
    frontier = [(pid, 0)]
    while frontier:
        current, depth = frontier.pop(0)
        kids = sorted(p for p, pp in parent_of.items() if pp == current)
        found += [(k, depth + 1) for k in kids]
        frontier += [(k, depth + 1) for k in kids]
    return found


def _status_kb(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _cmd(pid: int, depth: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    text = text.replace(str(ROOT / ".venv" / "bin") + "/", "").replace(sys.executable, "python")
    if "limit, parent" in text:
        return "watchdog (tests/integration/helpers_processes.py)"
    if "resource_tracker" in text:
        return "multiprocessing resource tracker"
    if "multiprocessing.spawn" in text:
        return "uvicorn worker process"
    if "-m dramatiq" in text:
        return "dramatiq " + ("supervisor (helyx worker)" if depth == 1 else "worker process")
    return text[:60]


@dataclass
class Mem:
    label: str
    peak_kb: int = 0
    start_kb: int = 0
    last_kb: int = 0


class MemorySampler:
    """VmHWM/VmRSS of every process the soak started and all their descendants, sampled."""

    def __init__(self, procs: Processes) -> None:
        self.procs = procs
        self.seen: dict[int, Mem] = {}
        self.series: list[tuple[float, dict[str, int]]] = []  # (time, RSS kB by process group)

    def sample(self, mark_start: bool = False) -> None:
        totals: Counter[str] = Counter()
        for proc in self.procs.started:
            root = proc.popen.pid
            for pid, depth in [(root, 0), *descendants(root)]:
                values = _status_kb(pid)
                if not values:
                    continue
                if depth:  # the watchdog is ours, not the product's
                    totals["worker" if proc.name.startswith("worker") else proc.name] += values.get("VmRSS", 0)
                mem = self.seen.setdefault(pid, Mem(f"{proc.name}: {'  ' * depth}{_cmd(pid, depth)}"))
                mem.peak_kb = max(mem.peak_kb, values.get("VmHWM", 0))
                mem.last_kb = values.get("VmRSS", 0)
                if mark_start or not mem.start_kb:
                    mem.start_kb = mem.last_kb
        self.series.append((time.perf_counter(), dict(totals)))


class EnvMonitor:
    """The shared services under the soak: Redis PING latency (a stall means Redis was frozen or
    starved, e.g. by another session's fault test) and PostgreSQL connections (ours and all)."""

    def __init__(self, db_url: str, redis_url: str, db_name: str) -> None:
        self.db_url, self.redis_url, self.db_name = db_url, redis_url, db_name
        self.ping_ms: list[float] = []
        self.redis_failures = self.redis_frozen = 0
        self.pg_failures: list[str] = []
        self.pg_ours_peak = self.pg_all_peak = self.pg_max = 0

    def run(self, stop: Any) -> None:
        import psycopg
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=5)
        redis_pid = int(client.info("server")["process_id"])
        conn: psycopg.Connection[Any] | None = None
        while not stop.wait(1.0):
            if _state(redis_pid) == "T":  # stopped: SIGSTOP from someone else's fault test
                self.redis_frozen += 1
            start = time.perf_counter()
            try:
                client.ping()
                self.ping_ms.append((time.perf_counter() - start) * 1000)
            except redis.RedisError:
                self.redis_failures += 1
            try:
                conn = conn or psycopg.connect(self.db_url, autocommit=True, connect_timeout=5)
                self.pg_max = int(conn.execute("SHOW max_connections").fetchone()[0])  # type: ignore[index]
                ours, total = conn.execute(
                    "SELECT COUNT(*) FILTER (WHERE datname = %s), COUNT(*) FROM pg_stat_activity",
                    [self.db_name]).fetchone()  # type: ignore[misc]
                self.pg_ours_peak, self.pg_all_peak = max(self.pg_ours_peak, ours), max(self.pg_all_peak, total)
            except psycopg.Error as exc:
                self.pg_failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}")
                if conn is not None:
                    conn.close()
                conn = None
        client.close()
        if conn is not None:
            conn.close()

    def rows(self) -> list[list[Any]]:
        stalls = sum(1 for ms in self.ping_ms if ms > 1000) + self.redis_failures
        return [
            ["Redis PING p50 / max ms; stalls > 1 s or failed; samples with redis-server stopped (SIGSTOP)",
             f"{pct(self.ping_ms, 50):.1f} / {max(self.ping_ms or [0]):.0f}; {stalls}; {self.redis_frozen}"],
            ["PostgreSQL connections: peak ours / peak all / max_connections",
             f"{self.pg_ours_peak} / {self.pg_all_peak} / {self.pg_max}"],
            ["PostgreSQL errors seen by the monitor (e.g. a restart by another session)",
             f"{len(self.pg_failures)} {self.pg_failures[:3]}"],
        ]


