"""`helyx worker` under a process-group stop and a dead worker process, with REAL processes (the
API, `helyx worker --processes 2`, PostgreSQL, Redis): a group SIGTERM (what honcho sends) lets the
running job finish and the worker exit 0; a SIGKILLed Dramatiq worker process does not take
`helyx worker` down, and its job is reclaimed and charged once. Then the supervisor alone, on
small commands: restart with backoff, exit 0, a stop passed on exactly once."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.api.chat.helpers import Books, assert_books_balance, books
from tests.conftest import TestAccount, create_test_account, emptied_pg_engine
from tests.integration.faults import isolated_redis_url, job_rows, wait_jobs
from tests.integration.helpers_processes import Proc, Processes, base_env, wait_dramatiq_workers
from workers.supervisor import Backoff

IMAGE_PRICE = 200_000_000
JOB_SECONDS = 3.0
GRACE_SECONDS = 10.0  # HELYX_SHUTDOWN_GRACE_SECONDS: far more than what is left of the job
LEASE_SECONDS = 3.0


@dataclass
class Deployment:
    procs: Processes
    env: dict[str, str]
    api: Proc
    engine: Engine
    redis_url: str

    def worker(self) -> Proc:
        """A fresh `helyx worker --processes 2`, returned once both processes consume."""
        worker = self.procs.worker(self.env, processes=2, threads=2)
        wait_dramatiq_workers(self.redis_url, 2)
        return worker

    def submit(self, account: TestAccount) -> str:
        with httpx.Client(timeout=30, trust_env=False) as http:
            response = http.post(self.api.api + "/images/generations",
                                 headers={**account.headers, "Prefer": "respond-async"},
                                 json={"prompt": "a lamp", "size": "256x256"})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def running(self, job_id: str, worker: Proc, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            [row] = job_rows(self.engine, [job_id])
            if row["status"] == "running":
                return row
            assert time.monotonic() < deadline, (row, worker.log())
            time.sleep(0.05)

    def running_job(self) -> tuple[TestAccount, Books, Proc, str, dict[str, Any]]:
        """A fresh Pro account (and its books), a fresh worker, and an image job it is running."""
        account = create_test_account(self.engine, "pro")
        before = books(self.engine, account.account_id)
        worker = self.worker()
        job_id = self.submit(account)
        return account, before, worker, job_id, self.running(job_id, worker)

    def assert_paid_once(self, job_id: str) -> dict[str, Any]:
        [row] = job_rows(self.engine, [job_id])
        assert row["status"] == "succeeded" and row["charged"] == row["price"] == IMAGE_PRICE, row
        with self.engine.connect() as conn:
            kinds = conn.execute(text("SELECT e.kind FROM ledger_entries e JOIN holds h ON h.id = e.hold_id"
                                      " WHERE h.purpose = :p ORDER BY e.id"), {"p": f"job:{job_id}"}).scalars()
            assert list(kinds) == ["reserve", "settle"], job_id
        return row


@pytest.fixture(scope="module")
def deployment(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("supervision")
    redis_url = isolated_redis_url()
    env = base_env(database_url=pg_url, redis_url=redis_url, simulate=1, storage_dir=tmp / "files",
                   secret_key="supervision-signing-secret-0123456789", simulated_job_seconds=JOB_SECONDS,
                   job_lease_seconds=LEASE_SECONDS, sweep_interval_seconds=1, stale_queued_seconds=30,
                   shutdown_grace_seconds=GRACE_SECONDS, rate_limit_pro=100_000)
    engine = emptied_pg_engine(pg_url, pool_size=10)
    with Processes(tmp / "procs") as procs:
        yield Deployment(procs, env, procs.serve(env), engine, redis_url)
    engine.dispose()


@pytest.fixture
def fresh_queues(deployment: Deployment) -> Deployment:
    isolated_redis_url()  # flushed: no heartbeat or message left from the previous test's workers
    return deployment


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if _ppid(int(entry.name)) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


# --- the production shape ------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
def test_a_sigterm_to_the_whole_process_group_lets_the_running_job_finish_and_the_worker_exit_0(
        fresh_queues: Deployment) -> None:
    d = fresh_queues
    account, before, worker, job_id, _ = d.running_job()

    # As honcho stops a Procfile line: SIGTERM to every process of the group at once (supervisor,
    # Dramatiq's main process, both worker processes), so each worker process also gets repeats
    # from Dramatiq's main process. Those may arrive before the first is handled (and merge with
    # it), so a second group SIGTERM a moment later makes sure a repeat reaches a stopping process.
    worker.signal_group(signal.SIGTERM)
    stopped_at = time.monotonic()
    time.sleep(0.3)
    worker.signal_group(signal.SIGTERM)
    try:
        code = worker.popen.wait(GRACE_SECONDS + 5)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - stopped_at

    assert code == 0, (code, worker.log())
    assert took < GRACE_SECONDS, took
    row = d.assert_paid_once(job_id)  # finished by the stopping worker, not left `running`
    assert row["attempts"] == 1, row
    assert "already stopping" in worker.log(20_000)  # the repeat came, and was ignored
    after = assert_books_balance(d.engine, account.account_id)
    assert before.balance - after.balance == IMAGE_PRICE


@pytest.mark.postgres
@pytest.mark.redis
def test_a_job_the_grace_cuts_off_is_queued_again_at_once_and_the_next_worker_runs_it(
        fresh_queues: Deployment) -> None:
    """It stayed `running` until its lease lapsed (counting against its account's running cap
    meanwhile), and only then did a worker take it up again (found by a production-shape walkthrough)."""
    d = fresh_queues
    account = create_test_account(d.engine, "pro")
    before = books(d.engine, account.account_id)
    slow = {**d.env, "HELYX_SIMULATED_JOB_SECONDS": "30", "HELYX_SHUTDOWN_GRACE_SECONDS": "1",
            "HELYX_JOB_LEASE_SECONDS": "120"}  # a lease far longer than this test
    worker = d.procs.worker(slow, processes=1, threads=2)
    wait_dramatiq_workers(d.redis_url, 1)
    job_id = d.submit(account)
    d.running(job_id, worker)

    worker.signal_group(signal.SIGTERM)
    assert worker.popen.wait(20) == 0, worker.log()
    [row] = job_rows(d.engine, [job_id])
    # its attempt given back: a stop the operator chose is no failure of the job's (caf09a4)
    assert (row["status"], row["lease_owner"], row["attempts"]) == ("queued", None, 0), (row, worker.log())
    assert f"queued again, to run once more and be charged once: {job_id}" in worker.log(50_000)

    runner = d.worker()  # the module's own: 3 s jobs, no sweeper needed (the message was sent at the stop)
    try:
        [row] = wait_jobs(d.engine, [job_id], timeout=20)
    finally:
        runner.terminate()  # the next tests count this module's workers
    assert row["attempts"] == 1, row
    d.assert_paid_once(job_id)
    after = assert_books_balance(d.engine, account.account_id)
    assert before.balance - after.balance == IMAGE_PRICE


@pytest.mark.postgres
@pytest.mark.redis
def test_a_sigkilled_worker_process_is_replaced_and_its_job_is_reclaimed_and_charged_once(
        fresh_queues: Deployment) -> None:
    d = fresh_queues
    account, before, worker, job_id, row = d.running_job()
    victim = int(row["lease_owner"].split(":")[1])
    dramatiq_main = _ppid(victim)
    supervisor = _ppid(dramatiq_main)
    assert os.getpgid(victim) == worker.popen.pid  # one of this worker's processes

    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    [row] = wait_jobs(d.engine, [job_id], timeout=45)
    took = time.monotonic() - killed_at

    assert worker.alive(), worker.log()
    d.assert_paid_once(job_id)
    assert row["attempts"] == 2, row  # reclaimed after its lease by the restarted workers' sweeper
    # Dramatiq's main process was replaced under the same supervisor (the pid `helyx worker` has)
    restarted = _children(supervisor)
    assert len(restarted) == 1 and restarted[0] != dramatiq_main, (restarted, dramatiq_main)
    assert "starting it again" in worker.log(20_000)
    # reclaimed by the restarted workers' sweeper once its lease lapsed (backoff 1 s + the boot of two processes +
    # lease + sweep + the job again), not by Dramatiq's requeue of a dead consumer's messages 30 s after its last
    # heartbeat (workers/broker.py): the sweeper's own line for this job says which
    assert any("job lease lapsed: sent again" in line and job_id in line for line in worker.log(1_000_000).splitlines())
    assert took < 30, took
    assert worker.terminate(timeout=GRACE_SECONDS + 5) == 0, worker.log()
    after = assert_books_balance(d.engine, account.account_id)
    assert before.balance - after.balance == IMAGE_PRICE


# --- the supervisor alone --------------------------------------------------------------------------


def test_the_backoff_doubles_from_one_second_to_thirty_and_starts_over_after_a_long_run() -> None:
    backoff = Backoff()
    assert [backoff.after(uptime=0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.after(uptime=60.0) == 1
    assert backoff.after(uptime=2.0) == 2


def test_a_command_that_fails_twice_is_started_again_until_it_exits_0(tmp_path: Path) -> None:
    """The supervisor in its own process: run here, it would make pytest a subreaper and stop
    every other child of pytest (a session's fake upstream) as a process left behind."""
    runs = tmp_path / "runs"
    script = (f"import pathlib, sys; p = pathlib.Path({str(runs)!r}); n = len(p.read_text()) if p.exists() else 0;"
              " p.write_text('x' * (n + 1)); sys.exit(1 if n < 2 else 0)")
    started = time.monotonic()
    code = subprocess.run([sys.executable, "-c", "from workers.supervisor import Backoff, Supervisor; import sys;"
                           " sys.exit(Supervisor(sys.argv[1:], Backoff(first=0.2, most=0.3)).run())",
                           sys.executable, "-c", script], stderr=subprocess.DEVNULL, timeout=30).returncode
    assert code == 0
    assert runs.read_text() == "xxx"
    assert time.monotonic() - started >= 0.2 + 0.3  # it waited between the runs


_TRAPS_STOPS = """
import pathlib, signal, sys, time
seen = pathlib.Path(sys.argv[1])
def on_stop(signum, frame):
    with seen.open("a") as f:
        f.write(signal.Signals(signum).name + "\\n")
signal.signal(signal.SIGTERM, on_stop)
signal.signal(signal.SIGINT, on_stop)
pathlib.Path(sys.argv[2]).touch()
while not seen.exists():
    time.sleep(0.01)
time.sleep(1.0)  # a graceful stop takes a while; the repeats arrive meanwhile
sys.exit(7)
"""


def _supervise(*command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "workers.supervisor", "--", *command],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.returncode
        time.sleep(0.01)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_is_passed_on_once_and_the_supervisor_exits_with_the_commands_code(
        stop: signal.Signals, tmp_path: Path) -> None:
    seen, ready = tmp_path / "seen", tmp_path / "ready"
    proc = _supervise(sys.executable, "-c", _TRAPS_STOPS, str(seen), str(ready))
    try:
        _wait_for(ready, proc)
        for _ in range(3):
            proc.send_signal(stop)
            time.sleep(0.1)
        code = proc.wait(10)
    finally:
        proc.kill()
    assert code == 7  # the command's own code, not a restart
    assert seen.read_text().split() == [stop.name]


def test_a_stop_during_the_backoff_ends_the_supervisor_at_once_without_another_start(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    command = f"import pathlib, sys; pathlib.Path({str(runs)!r}).touch(); sys.exit(3)"
    supervisor = ("import sys; from common import logs; from workers.supervisor import Backoff, Supervisor;"
                  " logs.configure('INFO'); sys.exit(Supervisor(sys.argv[1:], Backoff(first=5)).run())")
    proc = subprocess.Popen([sys.executable, "-c", supervisor, sys.executable, "-c", command],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # it has exited 3, the supervisor collected it and now waits 5 s before the next start
        said = _stderr_until(proc, b"starting it again in 5 s", 20)
        runs.unlink()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(4)  # at once: well inside the backoff
    finally:
        proc.kill()
    assert code == 0 and not runs.exists()
    assert b"exited with code 3" in said


def _stderr_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    """What the process wrote to its stderr, read until `needle` shows (bounded)."""
    assert proc.stderr is not None
    said, deadline = b"", time.monotonic() + timeout
    while needle not in said:
        assert proc.poll() is None and time.monotonic() < deadline, said
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            said += os.read(proc.stderr.fileno(), 65536)
    return said


def test_a_worker_process_acts_on_its_first_stop_signal_only(tmp_path: Path) -> None:
    """workers.stop_once wraps the handler Dramatiq installs in a worker process (here one of the
    same name and module); anywhere else it leaves the handlers alone."""
    script = """
import os, signal, sys, time
from workers import stop_once
assert not stop_once.ignore_repeated_stops()  # not a Dramatiq worker process: nothing wrapped
calls = []
def termhandler(signum, frame):
    calls.append(signum)
termhandler.__module__ = "dramatiq.cli"
signal.signal(signal.SIGTERM, termhandler)
signal.signal(signal.SIGHUP, termhandler)
assert stop_once.ignore_repeated_stops()
for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGTERM):
    os.kill(os.getpid(), sig)
    time.sleep(0.05)
print(calls)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == f"[{int(signal.SIGTERM)}]", done.stderr


_LEAVES_A_WORKER = """
import os, pathlib, subprocess, sys, time
pids = pathlib.Path(sys.argv[1])
if pids.exists():  # the second run: behave
    sys.exit(0)
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
pids.with_suffix(".tmp").write_text(f"{os.getpid()} {worker.pid}")
pids.with_suffix(".tmp").rename(pids)  # whole, never seen empty
time.sleep(60)
"""


def test_a_main_process_that_dies_alone_leaves_no_worker_behind_before_the_restart(tmp_path: Path) -> None:
    """Dramatiq's main process SIGKILLed (the OOM killer's pick): its worker processes come to the
    supervisor (a child subreaper) and are stopped before the next start, never left consuming."""
    pids = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-c", "from workers.supervisor import Backoff, Supervisor; import sys;"
                             " sys.exit(Supervisor(sys.argv[1:], Backoff(first=0.2), orphan_grace=2).run())",
                             sys.executable, "-c", _LEAVES_A_WORKER, str(pids)], stderr=subprocess.PIPE)
    try:
        _wait_for(pids, proc)
        main, worker = (int(x) for x in pids.read_text().split())
        os.kill(main, signal.SIGKILL)
        code = proc.wait(10)
    finally:
        proc.kill()
    assert code == 0  # restarted, and the second run exited 0
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # stopped and reaped, not an orphan of init
    assert b"left behind" in (proc.stderr.read() if proc.stderr else b"")


def test_sighup_is_passed_on_and_the_supervisor_stays(tmp_path: Path) -> None:
    seen, ready = tmp_path / "seen", tmp_path / "ready"
    script = ("import pathlib, signal, sys, time\n"
              f"signal.signal(signal.SIGHUP, lambda *a: pathlib.Path({str(seen)!r}).write_text('HUP'))\n"
              f"pathlib.Path({str(ready)!r}).touch()\n"
              f"while not pathlib.Path({str(seen)!r}).exists(): time.sleep(0.01)\n"
              "sys.exit(0)\n")
    proc = _supervise(sys.executable, "-c", script)
    try:
        _wait_for(ready, proc)
        proc.send_signal(signal.SIGHUP)
        code = proc.wait(10)
    finally:
        proc.kill()
    assert code == 0 and seen.read_text() == "HUP"


def test_the_command_is_stopped_when_the_supervisor_itself_is_killed(tmp_path: Path) -> None:
    """SIGKILL to the supervisor alone (the OOM killer): the command gets SIGTERM, rather than run on
    unsupervised (under honcho nobody noticed, and nobody would restart it after its next crash)."""
    seen, ready = tmp_path / "seen", tmp_path / "ready"
    proc = _supervise(sys.executable, "-c", _TRAPS_STOPS, str(seen), str(ready))
    try:
        _wait_for(ready, proc)
        proc.kill()
        proc.wait(5)
        deadline = time.monotonic() + 5
        # the trap's open() makes the file a moment before its line is in it
        while not (seen.exists() and seen.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.kill()
    assert seen.exists() and seen.read_text().split()[0] == "SIGTERM"
