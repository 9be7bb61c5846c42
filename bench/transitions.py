"""A job's claim and success on PostgreSQL, the pipelined path (common.jobs.lifecycle_pg) beside
the general one (SQLAlchemy, a round trip per statement) in the same run, alternating rounds.

    .venv/bin/python -m bench.transitions                 # 3 rounds x 600 jobs, 1 and 8 threads
    .venv/bin/python -m bench.transitions --jobs 300 --rounds 1

Each round submits `--jobs` image jobs on one account (as bench.jobs: every claim and success of
an account takes its row lock), then claims and succeeds each with one file, from 1 thread and
from `--threads` threads at once. Prints claim+success pairs/s, the client's CPU per job and all
PostgreSQL processes' CPU per job (others' work on the server included: read them side by side).
Database `helyx_bench_transitions`, dropped and created afresh.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench import _procs

PRICE = 1_000_000
TZ = "Asia/Karachi"


@contextmanager
def general_path(on: bool) -> Iterator[None]:
    """With `on`, common.jobs.lifecycle_pg leaves every claim and success to the general path."""
    from common.jobs import lifecycle_pg

    saved = lifecycle_pg.claim, lifecycle_pg.succeed
    if on:
        lifecycle_pg.claim = lambda *args, **kwargs: None  # type: ignore[assignment]
        lifecycle_pg.succeed = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        lifecycle_pg.claim, lifecycle_pg.succeed = saved


def run_round(engine: Any, secret: str, jobs: int, threads: int) -> dict[str, float]:
    from common import accounts, billing, clock
    from common.jobs import lifecycle
    from common.jobs.submit import submit_job

    principal = accounts.authenticate(engine, secret, now=clock.now().timestamp())
    ids = [submit_job(engine, principal, job_type="image", model="nano-banana-pro", price=PRICE, tz=TZ,
                      params={"prompt": f"t{i}", "n": 1, "width": 256, "height": 256}).job_id for i in range(jobs)]
    day = billing.today(TZ)
    errors: list[BaseException] = []

    def work(chunk: list[str]) -> None:
        try:
            for job_id in chunk:
                owner = f"bench-{job_id}"
                job = lifecycle.claim(engine, job_id, owner, 60, lambda plan: 10_000)
                assert job is not None and job.id == job_id, job
                files = [{"id": f"file_{job_id}", "storage_key": f"a/{job_id}/f.png", "content_type": "image/png",
                          "bytes": 10}]
                assert lifecycle.succeed(engine, job, owner, files, 3600, day)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    postgres = _procs.pids_named("postgres")
    pg_before = sum(_procs.cpu_seconds(p) for p in postgres)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    workers = [threading.Thread(target=work, args=(ids[i::threads],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, cpu = time.perf_counter() - wall_before, time.process_time() - cpu_before
    pg = sum(_procs.cpu_seconds(p) for p in postgres) - pg_before
    if errors:
        raise errors[0]
    return {"pairs/s": jobs / wall, "client CPU ms/job": cpu / jobs * 1e3, "PostgreSQL CPU ms/job": pg / jobs * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=600, help="jobs per round and configuration")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    print(f"# bench.transitions: {_procs.machine_note()}")

    from sqlalchemy import text

    from common import clock, db, ledger, migrate
    from tests.conftest import create_test_account

    url = _procs.fresh_pg_database("helyx_bench_transitions")
    engine = db.make_engine(url, pool_size=max(10, args.threads + 2))
    try:
        migrate.upgrade(engine)
        account = create_test_account(engine, "ultra")
        with engine.begin() as conn:
            ledger.grant(conn, account.account_id, 2 * args.rounds * 2 * args.jobs * PRICE,
                         now=clock.now().timestamp())
        results: dict[tuple[int, str], list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for threads in (1, args.threads):
                for name in ("general (SQLAlchemy)", "pipelined"):
                    with general_path(name.startswith("general")):
                        results.setdefault((threads, name), []).append(
                            run_round(engine, account.api_key, args.jobs, threads))
        with engine.connect() as conn:
            statuses = dict(conn.execute(text("SELECT status, COUNT(*) FROM jobs GROUP BY status")).all())
        rows = [[threads, name, *(_procs.median(r[k] for r in runs) for k in runs[0])]
                for (threads, name), runs in results.items()]
        _procs.table(f"claim + success, {args.jobs} jobs x {args.rounds} rounds per row, one account (median of "
                     f"rounds); job statuses afterwards {statuses}",
                     ["threads", "path", "pairs/s", "client CPU ms/job", "PostgreSQL CPU ms/job"], rows)
    finally:
        engine.dispose()
        _procs.drop_pg_database("helyx_bench_transitions")


if __name__ == "__main__":
    main()
