"""Fault injection for the integration tests: a paused Redis, a stopped PostgreSQL, and the books
read straight from the database afterwards.

Every fault is undone in a `finally`, and, in case the test run itself is killed before that
`finally` runs, by a detached dead man's switch (its own session, so no process-group kill of the
test run reaches it) that undoes the fault after a deadline anyway:

    with redis_paused():            # SIGSTOP redis-server ... SIGCONT, whatever happens
        ...
    with postgres_stopped():        # pg_ctlcluster stop ... start, whatever happens
        ...
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

REDIS_ADDRESS = "127.0.0.1:6379"
FAULT_DEADLINE_SECONDS = 60.0  # the dead man's switch undoes any fault after this, whatever happened


# --- the dead man's switch -----------------------------------------------------------------------


@contextlib.contextmanager
def dead_mans_switch(undo: str, after: float = FAULT_DEADLINE_SECONDS) -> Iterator[None]:
    """Run the shell command `undo` after `after` seconds unless the block ends first (then the
    switch is stopped, and the block's own `finally` undoes the fault)."""
    switch = subprocess.Popen(["sh", "-c", f"sleep {after:g}; {undo}"], start_new_session=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(switch.pid, signal.SIGKILL)  # the switch's own group: its sh and its sleep
        switch.wait(5)


# --- Redis ---------------------------------------------------------------------------------------


def isolated_redis_url() -> str:
    """The test Redis on a database of the fault tests' own (each pytest-xdist worker's own:
    tests.conftest), flushed. These tests time recovery, so the queues must be theirs alone.
    Skips locally, fails in CI, when Redis is unreachable."""
    import redis

    from tests.conftest import FAULTS_REDIS_URL, service_unavailable

    url = FAULTS_REDIS_URL
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        client.flushdb()
        client.close()
    except Exception as exc:  # noqa: BLE001
        service_unavailable("Redis", exc)
    return url


def redis_pid() -> int:
    """The redis-server serving 127.0.0.1:6379."""
    found = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True, check=False)
    pids = [int(p) for p in found.stdout.split()]
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if REDIS_ADDRESS in cmdline or ":6379" in cmdline or len(pids) == 1:
            return pid
    raise AssertionError(f"no redis-server for {REDIS_ADDRESS} among {pids}")


def _process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def redis_paused() -> Iterator[int]:
    """Redis frozen with SIGSTOP (connections stay open, nothing answers) for the block."""
    pid = redis_pid()
    with dead_mans_switch(f"kill -CONT {pid}"):
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 5
            while _process_state(pid) != "T" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _process_state(pid) == "T", "redis-server did not stop"
            yield pid
        finally:
            os.kill(pid, signal.SIGCONT)


# --- PostgreSQL ----------------------------------------------------------------------------------


def _cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def _pg_ctl(action: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Detached from our session: a test run killed mid-call does not leave the cluster half-done.
    return subprocess.run([*_cluster(), action, *extra], capture_output=True, text=True, check=check, timeout=60,
                          start_new_session=True)


def postgres_running() -> bool:
    return _pg_ctl("status", check=False).returncode == 0


@dataclass
class Outage:
    """When the server stopped and started answering again (time.monotonic), as a client saw it."""

    down_at: float = 0.0
    up_at: float = 0.0
    # When the last refused attempt began: the server was surely down until then. It came back
    # somewhere between that and up_at (the watcher polls, so up_at lags by up to one attempt).
    last_refused_at: float = 0.0

    @property
    def seconds(self) -> float:
        return self.up_at - self.down_at


@contextlib.contextmanager
def postgres_stopped(admin_url: str) -> Iterator[Outage]:
    """PostgreSQL shut down (fast: every connection is cut) for the block, started again after;
    the Outage is complete once the block has ended."""
    outage = Outage()
    watching = threading.Event()
    watcher = threading.Thread(target=_watch, args=(admin_url, outage, watching), daemon=True)
    undo = " ".join(shlex.quote(a) for a in [*_cluster(), "start"])
    with dead_mans_switch(undo):
        watcher.start()
        watching.wait(10)
        _pg_ctl("stop", "-m", "fast")
        try:
            assert not postgres_running()
            yield outage
        finally:
            if not postgres_running():
                _pg_ctl("start")
    watcher.join(30)
    assert postgres_running() and outage.up_at > outage.down_at > 0, outage


def _watch(admin_url: str, outage: Outage, watching: threading.Event) -> None:
    """Connect every 20 ms: note the first refusal, then the first success after it."""
    import psycopg

    url = admin_url.replace("postgresql+psycopg://", "postgresql://")
    deadline = time.monotonic() + FAULT_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        watching.set()
        attempt = time.monotonic()
        try:
            with psycopg.connect(url, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            if outage.down_at:
                outage.up_at = time.monotonic()
                return
        except psycopg.Error:
            outage.down_at = outage.down_at or time.monotonic()
            outage.last_refused_at = attempt
        time.sleep(0.02)


def forget_dead_connections() -> None:
    """Drop the pooled connections of every engine in this process (the session's fixtures'
    included): a restarted server has closed them all, and an engine without pre-ping would
    hand its next user a dead one (a fixture's teardown, say)."""
    import gc

    from common.db import dispose_engines

    dispose_engines()
    gc.unfreeze()  # an app's start-up froze the heap, and frozen objects are not listed below
    for obj in gc.get_objects():
        if isinstance(obj, Engine) and obj.dialect.name == "postgresql":
            obj.dispose()


def wait_postgres(engine: Engine, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --- what the tests read and assert --------------------------------------------------------------


def assert_envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    """`response` is `status` with the OpenAI error envelope (SPEC §2)."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    error = body["error"]
    assert set(error) >= {"message", "type", "code", "param"}, body
    assert isinstance(error["message"], str) and error["message"], body
    return error


def hold_rows(engine: Engine, account_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM holds WHERE account_id = :a ORDER BY created_at"), {"a": account_id})
        return [dict(r) for r in rows.mappings()]


def entries_by_hold(engine: Engine, account_id: str) -> dict[str, list[tuple[str, str, int, int]]]:
    """hold id -> its ledger entries (kind, reference, amount, held_delta), in order."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT hold_id, kind, reference, amount, held_delta FROM ledger_entries"
                                 " WHERE account_id = :a AND hold_id IS NOT NULL ORDER BY id"), {"a": account_id})
        out: dict[str, list[tuple[str, str, int, int]]] = {}
        for hold_id, kind, reference, amount, held_delta in rows:
            out.setdefault(hold_id, []).append((kind, reference, int(amount), int(held_delta)))
    return out


def assert_each_hold_resolved_once(engine: Engine, account_id: str) -> list[dict[str, Any]]:
    """Every hold of the account: one reserve, at most one `resolve:` entry (exactly one when the
    hold is no longer open), whose amounts match the hold's row."""
    holds = hold_rows(engine, account_id)
    entries = entries_by_hold(engine, account_id)
    for hold in holds:
        mine = entries.get(hold["id"], [])
        reserves = [e for e in mine if e[1] == f"reserve:{hold['id']}"]
        resolves = [e for e in mine if e[1] == f"resolve:{hold['id']}"]
        assert len(reserves) == 1 and reserves[0][2:] == (0, hold["amount"]), (hold, mine)
        assert len(mine) == 1 + len(resolves), (hold, mine)
        if hold["status"] == "open":
            assert resolves == [], (hold, mine)
            continue
        assert len(resolves) == 1, (hold, mine)
        assert resolves[0][2:] == (-int(hold["charged"] or 0), -hold["amount"]), (hold, mine)
        assert 0 <= int(hold["charged"] or 0) <= hold["amount"], hold
    return holds


def job_rows(engine: Engine, job_ids: list[str]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM jobs WHERE id = ANY(:ids)"), {"ids": job_ids}).mappings().all()
    by_id = {r["id"]: dict(r) for r in rows}
    return [by_id[i] for i in job_ids]


def wait_jobs(engine: Engine, job_ids: list[str], timeout: float,
              terminal: tuple[str, ...] = ("succeeded", "failed", "canceled")) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = job_rows(engine, job_ids)
        if all(r["status"] in terminal for r in rows):
            return rows
        if time.monotonic() > deadline:
            pending = [(r["id"], r["status"], r["attempts"]) for r in rows if r["status"] not in terminal]
            raise AssertionError(f"jobs unfinished after {timeout} s: {pending}")
        time.sleep(0.1)


# --- Load during a fault ------------------------------------------------------------------------

LOAD_CLIENT_TIMEOUT = 20.0  # far beyond what any answer may take: a hang shows as a long latency


@dataclass
class Call:
    """One request made while a fault was injected, as the client saw it."""

    kind: str
    account: str
    started: float
    ended: float
    status: int  # 0: a transport error (a timeout, a dropped connection)
    body: Any = None
    error: str = ""

    @property
    def took(self) -> float:
        return self.ended - self.started


@dataclass
class Load:
    """Requests sent at a fixed pace from several threads until `stop`, every one recorded."""

    stop: threading.Event = field(default_factory=threading.Event)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, kind: str, api: str, account: Any, every: float,
            send: Callable[[httpx.Client, int], httpx.Response], limit: int = 400) -> None:
        """`send` every `every` seconds as `account` (a TestAccount); at most `limit` times, a bound on
        the load whatever the timing."""
        with httpx.Client(base_url=api, headers=account.headers, timeout=LOAD_CLIENT_TIMEOUT,
                          trust_env=False) as http:
            for i in range(limit):
                if self.stop.is_set():
                    return
                self.record(kind, account.account_id, lambda i=i: send(http, i))
                self.stop.wait(every)

    def record(self, kind: str, account_id: str, request: Callable[[], httpx.Response]) -> Call:
        started = time.monotonic()
        try:
            response = request()
            call = Call(kind, account_id, started, time.monotonic(), response.status_code, _body(response))
        except httpx.HTTPError as exc:
            call = Call(kind, account_id, started, time.monotonic(), 0, error=repr(exc))
        with self.lock:
            self.calls.append(call)
        return call


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
