"""Shared helpers for the benchmarks: databases, child processes, memory, percentiles, tables.

Every process a benchmark starts is started here, in its own session (process group), and is
killed (SIGTERM, then SIGKILL) when the benchmark ends, however it ends.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
HELYX = str(VENV_BIN / "helyx")
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
WORKDIR = Path(tempfile.mkdtemp(prefix="helyx-bench-"))

_started: list[Proc] = []


# --- databases -------------------------------------------------------------------------------

def fresh_pg_database(name: str, prefix: str = "helyx_bench") -> str:
    """Drop and create database `name` (ours alone: a `prefix`* name); returns its URL."""
    import psycopg

    if not name.startswith(prefix):
        raise ValueError(f"benchmarks only ever drop their own {prefix}* databases")
    with psycopg.connect(f"{PG_ADMIN_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN_URL}/{name}"


def more_accounts(db_url: str, n: int, label: str) -> list[str]:
    """`n` more ultra accounts, well funded, made in-process (faster than n CLI runs); their keys.
    A load spread over them has no hot account row (which all of one account's holds,
    settlements and job claims queue on)."""
    from common import accounts, billing, clock, ledger
    from common.db import make_engine

    engine = make_engine(db_url)
    now, keys = clock.now().timestamp(), []
    with engine.begin() as conn:
        for i in range(n):
            account_id, key = accounts.create_account(conn, f"{label}{i}@bench.local", "ultra",
                                                      day=billing.today("Asia/Karachi"), now=now)
            ledger.grant(conn, account_id, 10**14, now=now)
            keys.append(key.secret)
    engine.dispose()
    return keys


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG_ADMIN_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_settings() -> dict[str, str]:
    import psycopg

    with psycopg.connect(f"{PG_ADMIN_URL}/postgres") as conn:
        return {k: conn.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
                for k in ("server_version", "synchronous_commit", "fsync", "max_connections")}


def flush_redis(url: str = REDIS_URL, only_db: int = 13) -> None:
    """Flush the Redis database of `url`, which must be `only_db` (the benchmarks' own)."""
    import redis

    if not url.rstrip("/").endswith(f"/{only_db}"):
        raise ValueError(f"benchmarks only flush Redis db {only_db}")
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


# --- processes ---------------------------------------------------------------------------------

def uvicorn_http(tree: Path = ROOT) -> list[str]:
    """The `--http` of `helyx serve` (api/http_protocol.py: httptools, the request head bounded), so that a
    benchmark's uvicorn runs what production runs; nothing for a tree older than that module (bench.ab_chat)."""
    return ["--http", "api.http_protocol:BoundedHeadProtocol"] if (tree / "api" / "http_protocol.py").exists() else []


class Proc:
    """A child process in its own process group, with its output in WORKDIR/<name>.log."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = WORKDIR / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(list(argv), env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.pid = self.popen.pid
        _started.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        # whatever the group left behind (uvicorn/dramatiq children)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()
        if self in _started:
            _started.remove(self)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all() -> None:
    for proc in reversed(list(_started)):
        proc.stop(timeout=5)


atexit.register(stop_all)


def install_signal_handlers() -> None:
    """In the benchmark's main process only: SIGTERM/SIGHUP exit through atexit (children die too)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str = "/", timeout: float = 60.0, proc: Proc | None = None) -> None:
    """Until 127.0.0.1:port answers `path` with any HTTP status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port}{path}" + (f"\n{proc.tail()}" if proc else ""))


def run_json(argv: Sequence[str], env: dict[str, str]) -> Any:
    out = subprocess.run(list(argv), env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def helyx_env(**overrides: str) -> dict[str, str]:
    """The parent environment without any HELYX_ variable, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELYX_")}
    env.update({"PYTHONUNBUFFERED": "1"})
    env.update(overrides)
    return env


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                parent_of[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parent_of.items() if pp == current]
        found += kids
        frontier += kids
    return found


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM = peak RSS) of `pid` in MB; (0, 0) when it is gone."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in values:
                    values[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


def pids_named(*names: str) -> list[int]:
    """Every process whose command name (/proc/PID/comm) is one of `names` (the machine's
    PostgreSQL backends, its redis-server), to count the services' CPU beside ours."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() in names:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def dramatiq_workers(pid: int) -> list[int]:
    """The processes that run jobs under `pid` (`helyx worker`, or Dramatiq's CLI itself): the
    leaves among Dramatiq's processes (its main process, and a supervisor, only watch them)."""
    return [p for p in children(pid) if ("dramatiq" in cmdline(p) or "multiprocessing" in cmdline(p))
            and not children(p)]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid`."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU seconds used so far by `pid`."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


# --- numbers -----------------------------------------------------------------------------------

def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Iterable[float]) -> float:
    items = [v for v in values if v == v]
    return statistics.median(items) if items else float("nan")


def fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A Markdown table (so it pastes into bench/README.md as is)."""
    cells = [[fmt(c, digits) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [f"\n### {title}\n",
             "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in cells:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def machine_note() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat; diff two readings."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def busy_percent(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Machine CPU busy between two machine_cpu() readings, in % of all cores."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * 100 if total else float("nan")


def wait_for_postgres(timeout: float = 120.0) -> None:
    """Until PostgreSQL accepts a connection again (others' fault tests restart the shared server)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(f"{PG_ADMIN_URL}/postgres", connect_timeout=3).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def retrying(what: str, func: Any, attempts: int = 3) -> Any:
    """func() again (after PostgreSQL is back) when the shared server went away under it."""
    import psycopg
    import sqlalchemy.exc

    for attempt in range(1, attempts + 1):
        try:
            return func()
        except (psycopg.OperationalError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.TimeoutError) as exc:
            if attempt == attempts:
                raise
            print(f"  ({what}: PostgreSQL went away ({type(exc).__name__}); retrying after it is back)", flush=True)
            time.sleep(2)
            wait_for_postgres()
    raise AssertionError("unreachable")
