"""An A/B of GET /api/v1/jobs/{id}: two source trees' `uvicorn api.main:app` (one worker each) on one
database (helyx_bench_abpoll, made afresh) and Redis db 12 (flushed), wrk at c=64 alternating round
by round; polls/s and each server's CPU per poll.

    git worktree add /tmp/old <commit> && ln -s "$PWD/.venv" /tmp/old/.venv
    .venv/bin/python -m bench.ab_polls --old /tmp/old                 # a queued job
    .venv/bin/python -m bench.ab_polls --old /tmp/old --succeeded     # a succeeded job with its file

Needs wrk on the PATH; uses ports 18931 and 18932.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

DATABASE = "helyx_bench_abpoll"
PORTS = {"old": 18931, "new": 18932}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="the other version's source tree (a git worktree)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--succeeded", action="store_true", help="poll a finished job (with a file), not a queued one")
    args = parser.parse_args()
    trees = {"old": Path(args.old).resolve(), "new": Path.cwd()}
    env = _environment(Path(tempfile.mkdtemp()))
    key = _account(trees["new"], env)
    servers = {name: _uvicorn(tree, env, PORTS[name]) for name, tree in trees.items()}
    try:
        job = _job(trees["new"], env, key, args.succeeded)
        results: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
        for round_ in range(args.rounds):
            for name in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                polls, cpu_ms = _load(servers[name], PORTS[name], job, key, args.seconds)
                results[name].append((polls, cpu_ms))
                print(f"  {name}: {polls:,.0f} polls/s, {cpu_ms:.3f} ms of server CPU per poll", flush=True)
    finally:
        for server in servers.values():
            server.send_signal(signal.SIGTERM)
        for server in servers.values():
            server.wait(10)
    for name, runs in results.items():
        rates = sorted(rate for rate, _ in runs)
        print(f"{name}: median {statistics.median(rates):,.0f} polls/s ({', '.join(f'{r:,.0f}' for r in rates)}); "
              f"median {statistics.median(cpu for _, cpu in runs):.3f} ms of CPU per poll")


def _environment(scratch: Path) -> dict[str, str]:
    for statement in (f"DROP DATABASE IF EXISTS {DATABASE}", f"CREATE DATABASE {DATABASE}"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc", statement], check=True)
    subprocess.run(["redis-cli", "-n", "12", "flushdb"], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELYX_")}
    env.update(HELYX_DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{DATABASE}",
               HELYX_REDIS_URL="redis://127.0.0.1:6379/12", HELYX_SECRET_KEY="bench-ab-polls-0123456789abcdef0123",
               HELYX_STORAGE_DIR=str(scratch / "files"), HELYX_RATE_LIMIT_PRO="100000000", HELYX_LOG_LEVEL="WARNING",
               HELYX_SIMULATE="1")
    return env


def _account(tree: Path, env: dict[str, str]) -> str:
    subprocess.run([str(tree / ".venv/bin/helyx"), "migrate"], env=env, check=True, capture_output=True)
    created = subprocess.run([str(tree / ".venv/bin/helyx"), "account", "create", "ab@example.com", "--plan", "pro"],
                             env=env, check=True, capture_output=True, text=True).stdout
    found = re.search(r"hx-[A-Za-z0-9]+", created)
    assert found, created
    return found.group(0)


def _uvicorn(tree: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([str(tree / ".venv/bin/python"), "-m", "uvicorn", "api.main:app", "--app-dir", str(tree),
                               "--port", str(port), "--no-access-log", "--log-level", "warning"], env=env, cwd=tree)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server on :{port} did not start")


def _job(tree: Path, env: dict[str, str], key: str, succeeded: bool) -> str:
    api, auth = f"http://127.0.0.1:{PORTS['new']}/api/v1", {"Authorization": f"Bearer {key}"}
    job = httpx.post(f"{api}/images/generations", headers={**auth, "Prefer": "respond-async"}, trust_env=False,
                     json={"prompt": "a kite", "size": "256x256"}).json()["id"]
    if succeeded:
        worker = subprocess.Popen([str(tree / ".venv/bin/helyx"), "worker", "--processes", "1", "--threads", "1"],
                                  env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while httpx.get(f"{api}/jobs/{job}", headers=auth, trust_env=False).json()["status"] != "succeeded":
                if time.monotonic() > deadline:
                    raise SystemExit("the job did not succeed within 60 s")
                time.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    return str(job)


def _load(server: subprocess.Popen[bytes], port: int, job: str, key: str, seconds: int) -> tuple[float, float]:
    url, header = f"http://127.0.0.1:{port}/api/v1/jobs/{job}", f"Authorization: Bearer {key}"
    subprocess.run(["wrk", "-t1", "-c16", "-d1s", "-H", header, url], capture_output=True, check=True)  # warm-up
    before = _cpu_seconds(server.pid)
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", "-H", header, url], capture_output=True, text=True,
                         check=True).stdout
    used = _cpu_seconds(server.pid) - before
    if "Non-2xx" in out:
        raise SystemExit(f"non-2xx answers:\n{out}")
    rate, total = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in", out)
    assert rate and total, out
    return float(rate.group(1)), 1000 * used / int(total.group(1))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
