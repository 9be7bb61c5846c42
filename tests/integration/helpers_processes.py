"""Real Helyx processes for the integration tests: `helyx serve`, `helyx worker` and uvicorn, each
started as a subprocess in its own session (so a kill reaches its children too), with an explicit
environment, on a free port of 127.0.0.1, killed at teardown, and in any case after MAX_SECONDS or
as soon as the test run that started it is gone.

    with Processes(tmp_path) as procs:
        api = procs.serve(env)                 # waits for /readyz
        worker = procs.worker(env)             # `helyx worker --processes 1 --threads 4`
        worker.kill()                          # SIGKILL to its whole process group
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from tests.conftest import TEST_TZ

VENV_BIN = Path(sys.executable).parent
HELYX = str(VENV_BIN / "helyx")
# Provider keys the built-in catalog names: never inherited, so every model is simulated.
_PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "PERPLEXITY_API_KEY", "XAI_API_KEY",
                  "MOONSHOT_API_KEY", "DASHSCOPE_API_KEY", "ZHIPU_API_KEY", "MINIMAX_API_KEY", "GROQ_API_KEY",
                  "MISTRAL_API_KEY")


# Each process runs under this watchdog, the leader of its own process group: it lets SIGTERM reach
# the command directly (one signal, so a graceful stop stays graceful), passes on the exit code,
# and SIGKILLs the whole group when the time limit passes or pytest itself is gone (the watchdog is
# re-parented), so nothing started here outlives the test run, whatever happens to it.
_WATCHDOG = """
import os, signal, subprocess, sys, time
limit, parent = float(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGTERM, lambda *_: None)
child = subprocess.Popen(sys.argv[3:])
deadline = time.monotonic() + limit
while child.poll() is None:
    if time.monotonic() > deadline or os.getppid() != parent:
        os.killpg(0, signal.SIGKILL)
    time.sleep(0.2)
sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)
"""
MAX_SECONDS = 600.0


# A port handed to a process to bind seconds later (after its imports) must not be taken meanwhile:
# bind(0) and every outgoing connection draw from the kernel's ephemeral range (32768-60999 here),
# so the ports come from below it, a slice of its own for each pytest-xdist process.
_PORT_SLICE = 500
_PORTS_FROM = 10_000 + _PORT_SLICE * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_next_port = [os.getpid() % _PORT_SLICE]  # another run's ports may linger in TIME_WAIT: start elsewhere


def _ephemeral_from() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default



def free_port() -> int:
    """A port of 127.0.0.1 free now that no other test of this run can be given or take by chance
    (on a kernel whose ephemeral range starts too low for the slice: one it gives, as before)."""
    if _ephemeral_from() < _PORTS_FROM + _PORT_SLICE:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(_PORT_SLICE):
        port = _PORTS_FROM + _next_port[0] % _PORT_SLICE
        _next_port[0] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {_PORTS_FROM}-{_PORTS_FROM + _PORT_SLICE - 1}")


def base_env(**helyx: object) -> dict[str, str]:
    """The parent's environment without any HELYX_* or provider key, plus the given HELYX_ values
    (keyword `database_url` becomes HELYX_DATABASE_URL); the tests' time zone unless one is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELYX_") and k not in _PROVIDER_KEYS}
    env["PYTHONUNBUFFERED"] = "1"
    env["HELYX_TIMEZONE"] = TEST_TZ
    env.update({f"HELYX_{k.upper()}": str(v) for k, v in helyx.items() if v is not None})
    return env


@dataclass
class Proc:
    """One started process (the leader of its own process group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        assert self.port is not None, f"{self.name} has no port"
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")[-tail:]
        except OSError:
            return ""

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the process and everything it started; wait until it is gone."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        self.stopped = True

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a graceful stop); SIGKILL whatever is left after `timeout`. The exit code."""
        self.signal_group(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        self.signal_group(signal.SIGKILL)  # stragglers of the group (dramatiq's children)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self.stopped = True
        return code


class Processes:
    """Starts processes and kills every one of them when the block ends, whatever happened."""

    def __init__(self, workdir: Path, max_seconds: float = MAX_SECONDS) -> None:
        self.workdir = workdir
        self.max_seconds = max_seconds
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.started: list[Proc] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.started:
            if not proc.stopped or proc.alive():
                proc.kill()

    def start(self, name: str, argv: list[str], env: Mapping[str, str], port: int | None = None) -> Proc:
        log_path = self.workdir / f"{name}-{len(self.started)}.log"
        with open(log_path, "wb") as log:
            # cwd is a scratch dir, so no stray .env file is read; start_new_session makes the
            # child a group leader, so kill() reaches dramatiq's worker processes as well.
            watched = [sys.executable, "-c", _WATCHDOG, str(self.max_seconds), str(os.getpid()), *argv]
            popen = subprocess.Popen(watched, env=dict(env), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log_path, port)
        self.started.append(proc)
        return proc

    def serve(self, env: Mapping[str, str], *, ready_timeout: float = 40.0, port: int | None = None) -> Proc:
        """`helyx serve` on 127.0.0.1:<free port>, returned once /readyz answers 200."""
        port = port or free_port()
        proc = self.start("serve", [HELYX, "serve", "--host", "127.0.0.1", "--port", str(port)], env, port)
        wait_ready(proc, ready_timeout)
        return proc

    def uvicorn(self, env: Mapping[str, str], *, ready_timeout: float = 40.0) -> Proc:
        """`uvicorn api.main:app` after `helyx migrate`: what the Procfile's web line (`helyx serve` in
        the production shape) runs, with a short grace for the fault tests."""
        subprocess.run([HELYX, "migrate"], env=dict(env), cwd=self.workdir, check=True, timeout=60,
                       stdout=subprocess.DEVNULL)
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--timeout-graceful-shutdown", "2"]
        proc = self.start("uvicorn", argv, env, port)
        wait_ready(proc, ready_timeout)
        return proc

    def worker(self, env: Mapping[str, str], *, processes: int = 1, threads: int = 4) -> Proc:
        """`helyx worker` (dramatiq over workers.actors); needs HELYX_REDIS_URL in `env`."""
        argv = [HELYX, "worker", "--processes", str(processes), "--threads", str(threads)]
        return self.start("worker", argv, env)


def wait_ready(proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()}")
            try:
                response = client.get(proc.url + "/readyz")
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.1)
    raise AssertionError(f"{proc.name} not ready within {timeout} s ({last}):\n{proc.log()}")


def wait_dramatiq_workers(redis_url: str, count: int, timeout: float = 40.0, namespace: str = "dramatiq") -> None:
    """Until `count` Dramatiq broker instances have fetched from Redis (their heartbeats), i.e. the
    worker processes are up and consuming."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if client.zcard(f"{namespace}:__heartbeats__") >= count:
                return
            time.sleep(0.1)
    finally:
        client.close()
    raise AssertionError(f"{count} dramatiq worker(s) did not start within {timeout} s")
