"""Ledger throughput: reserve+settle pairs per second, through common.billing (one short
transaction each, exactly as the API's chat path and the workers use them).

    .venv/bin/python -m bench.ledger                 # PostgreSQL + SQLite, 3 repeats of 5 s
    .venv/bin/python -m bench.ledger --seconds 3 --repeats 1 --no-sqlite

Configurations: 1 thread, 16 threads, 2 processes x 8 threads; each on MANY accounts (every
worker thread has its own account: no row contention) and on ONE hot account (every thread
reserves and settles on the same account row). Prints pairs/s, p50/p99 of one pair, p50 of the
reserve and settle halves, and the client's own CPU per pair. PostgreSQL runs in the
database `helyx_bench_ledger` (dropped and created afresh); SQLite in a temporary file.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench import _pgbench, _procs

AMOUNT = 2_000_000  # micro-credits held (2 credits)
CHARGE = 1_234_567  # charged at settlement (less than the hold: the rest is released)
TZ = "Asia/Karachi"


@dataclass
class Run:
    pairs: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    reserve: list[float] = field(default_factory=list)
    settle: list[float] = field(default_factory=list)
    errors: int = 0


def _setup(url: str, accounts_needed: int) -> list[tuple[str, str]]:
    """Migrate and create `accounts_needed` ultra accounts with a large top-up."""
    from common import accounts, billing, clock, ledger
    from common.db import make_engine
    from common.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    now = clock.now().timestamp()
    made = []
    with engine.begin() as conn:
        for i in range(accounts_needed):
            account_id, key = accounts.create_account(conn, f"ledger{i}@bench.local", "ultra",
                                                      day=billing.today(TZ), now=now)
            # 100 million credits: far more than a run spends, and under an account's balance bound
            ledger.grant(conn, account_id, 10**14, now=now)
            made.append((account_id, key.id))
    engine.dispose()
    return made


def _verbs(engine: Any) -> tuple[Any, Any]:
    """(reserve, settle): the real verbs, as the API and the workers call them."""
    from common import billing

    return (lambda aid, kid: billing.reserve(engine, account_id=aid, key_id=kid, amount=AMOUNT, purpose="bench",
                                             ttl=900, tz=TZ),
            lambda hold: billing.settle(engine, hold, CHARGE, "bench"))


def _worker_loop(engine: Any, account: tuple[str, str], until: float, max_pairs: int, out: Run,
                 lock: threading.Lock) -> None:
    account_id, key_id = account
    do_reserve, do_settle = _verbs(engine)
    local = Run()
    perf = time.perf_counter
    while time.time() < until and local.pairs < max_pairs:
        t0 = perf()
        try:
            hold = do_reserve(account_id, key_id)
            t1 = perf()
            do_settle(hold)
        except Exception:  # noqa: BLE001 - counted and shown; a benchmark keeps going
            local.errors += 1
            continue
        t2 = perf()
        local.pairs += 1
        local.latencies.append(t2 - t0)
        local.reserve.append(t1 - t0)
        local.settle.append(t2 - t1)
    with lock:
        out.pairs += local.pairs
        out.errors += local.errors
        out.latencies += local.latencies
        out.reserve += local.reserve
        out.settle += local.settle


def run_threads(url: str, accounts: list[tuple[str, str]], threads: int, start: float, seconds: float,
                max_pairs: int = 10**9) -> Run:
    """`threads` threads in this process, one engine; thread i uses accounts[i % len(accounts)]."""
    from common import pg_statements
    from common.db import is_postgres, make_engine

    engine = make_engine(url, pool_size=max(threads, 5))
    with contextlib.ExitStack() as stack:  # open the connections before the clock starts
        stack.enter_context(engine.connect())
        for _ in range(threads if is_postgres(engine) else 0):
            stack.enter_context(pg_statements.connection(engine))
    out, lock = Run(), threading.Lock()
    until = start + seconds
    workers = [threading.Thread(target=_worker_loop,
                                args=(engine, accounts[i % len(accounts)], until, max_pairs, out, lock))
               for i in range(threads)]
    while time.time() < start:
        time.sleep(0.001)
    cpu0 = _cpu()
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.wall = time.perf_counter() - t0
    out.cpu = _cpu() - cpu0
    engine.dispose()
    return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(args: tuple[str, list[tuple[str, str]], int, float, float]) -> Run:
    url, accounts, threads, start, seconds = args
    return run_threads(url, accounts, threads, start, seconds)


def run_processes(url: str, accounts: list[tuple[str, str]], processes: int, threads: int, seconds: float) -> Run:
    ctx = multiprocessing.get_context("spawn")
    start = time.time() + 3.0  # time for the children to import and connect
    per = [accounts[p * threads:(p + 1) * threads] or accounts for p in range(processes)]
    with ctx.Pool(processes) as pool:
        results = pool.map(_child, [(url, per[p], threads, start, seconds) for p in range(processes)])
    total = Run()
    for r in results:
        total.pairs += r.pairs
        total.errors += r.errors
        total.latencies += r.latencies
        total.reserve += r.reserve
        total.settle += r.settle
        total.wall = max(total.wall, r.wall)
        total.cpu += r.cpu
    return total


def check_ledger(url: str) -> str:
    """Every bench account: sum(entries) == balance, held == 0 == sum(held_delta), no open holds."""
    from sqlalchemy import text

    from common.db import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        bad = conn.execute(text(
            "SELECT a.id FROM accounts a JOIN (SELECT account_id, SUM(amount) s, SUM(held_delta) h"
            " FROM ledger_entries GROUP BY account_id) e ON e.account_id = a.id"
            " WHERE a.allowance + a.topup <> e.s OR a.held <> e.h OR a.held <> 0")).all()
        open_holds = conn.execute(text("SELECT COUNT(*) FROM holds WHERE status = 'open'")).scalar_one()
        entries = conn.execute(text("SELECT COUNT(*) FROM ledger_entries")).scalar_one()
    engine.dispose()
    if bad or open_holds:
        return f"LEDGER CHECK FAILED: {len(bad)} account(s) off, {open_holds} open hold(s)"
    return f"ledger check ok ({entries:,} entries: sum == balance, held == 0 on every account)"


def bench_backend(label: str, url: str, seconds: float, repeats: int, with_processes: bool,
                  with_pgbench: bool) -> list[list[Any]]:
    """Every configuration x repeat runs Helyx's verbs and then, on PostgreSQL, pgbench with the
    same statements (interleaved), so a change in the machine's load hits both alike."""
    accounts = _procs.retrying("setup", lambda: _setup(url, 16))
    hot = [accounts[0]]
    configs: list[tuple[str, str, int, int]] = [("many", "1 thread", 1, 1), ("many", "16 threads", 1, 16)]
    if with_processes:
        configs.append(("many", "2 proc x 8 threads", 2, 8))
    configs += [("one hot", "1 thread", 1, 1), ("one hot", "16 threads", 1, 16)]
    if with_processes:
        configs.append(("one hot", "2 proc x 8 threads", 2, 8))
    rows = []
    for shape, name, procs, threads in configs:
        pool = accounts if shape == "many" else hot
        runs: list[Run] = []
        direct: list[tuple[float, float]] = []
        for _ in range(repeats):
            def once(pool: list[tuple[str, str]] = pool, procs: int = procs, threads: int = threads) -> Run:
                if procs == 1:
                    return run_threads(url, pool, threads, time.time(), seconds)
                return run_processes(url, pool, procs, threads, seconds)

            run = _procs.retrying(f"{shape} {name}", once)
            if run.errors > run.pairs:  # the server restarted mid-run: measure again
                _procs.wait_for_postgres()
                run = _procs.retrying(f"{shape} {name}", once)
            runs.append(run)
            print(f"  {label} helyx   {shape:7} {name:20} {run.pairs / run.wall:8.0f} pairs/s "
                  f"p50 {_procs.pct(run.latencies, 50) * 1e3:.2f} ms errors {run.errors}", flush=True)
            if with_pgbench and procs == 1:
                tps, mean = _procs.retrying(f"pgbench {shape} {name}", lambda pool=pool, threads=threads: _pgbench.run(
                    url, [a for a, _ in pool], threads, seconds, AMOUNT, CHARGE))
                direct.append((tps, mean))
                print(f"  {label} pgbench {shape:7} {name:20} {tps:8.0f} pairs/s mean {mean:.2f} ms", flush=True)
        rates = [r.pairs / r.wall for r in runs]
        mid = sorted(runs, key=lambda r: r.pairs / r.wall)[len(runs) // 2]  # the median run
        rows.append([label, "helyx (billing)", shape, name, _procs.median(rates), min(rates), max(rates),
                     _procs.median([_procs.pct(r.latencies, 50) * 1e3 for r in runs]),
                     _procs.median([_procs.pct(r.latencies, 99) * 1e3 for r in runs]),
                     _procs.pct(mid.reserve, 50) * 1e3, _procs.pct(mid.settle, 50) * 1e3,
                     mid.cpu / max(1, mid.pairs) * 1e3, sum(r.errors for r in runs), "-"])
        if direct:
            tps_values = [t for t, _ in direct]
            ratio = _procs.median([r / t for r, t in zip(rates, tps_values, strict=True)])
            rows.append([label, "pgbench (same SQL)", shape, name, _procs.median(tps_values), min(tps_values),
                         max(tps_values), "-", "-", "-", "-", "-", 0, f"{ratio:.0%}"])
    print("  " + _procs.retrying("ledger check", lambda: check_ledger(url)), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per configuration (median shown)")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--no-processes", action="store_true")
    parser.add_argument("--no-pgbench", action="store_true", help="skip the pgbench reference")
    args = parser.parse_args()
    with_pgbench = not args.no_pgbench and _pgbench.available()
    _procs.install_signal_handlers()
    print(f"# bench.ledger: {_procs.machine_note()}; PostgreSQL {_procs.pg_settings()}", flush=True)
    rows = []
    db = "helyx_bench_ledger"
    url = _procs.fresh_pg_database(db)
    try:
        rows += bench_backend("PostgreSQL", url, args.seconds, args.repeats, not args.no_processes, with_pgbench)
    finally:
        _procs.drop_pg_database(db)
    if not args.no_sqlite:
        path = _procs.WORKDIR / "ledger.db"
        rows += bench_backend("SQLite", f"sqlite:///{path}", args.seconds, args.repeats, False, False)
    _procs.table(
        f"reserve+settle pairs, {args.repeats} x {args.seconds:g} s each (Helyx and pgbench interleaved), median",
        ["backend", "client", "accounts", "workers", "pairs/s", "min", "max", "p50 ms", "p99 ms", "reserve p50",
         "settle p50", "client CPU ms/pair", "errors", "helyx / pgbench"], rows)


if __name__ == "__main__":
    main()
