"""The chat path's round trips alone, at concurrency 1: what the design costs before any of the
gateway's own Python runs around them.

    .venv/bin/python -m bench.round_trips                 # 3,000 iterations (~10 s)
    .venv/bin/python -m bench.round_trips --iterations 10000

A chat request in the production shape makes three round trips besides the upstream call (README,
Performance): the rate-limit script on Redis, the admission statement on PostgreSQL (the key
looked up and the credits held in one statement), and the settlement (one statement, the
generation record in it, committed durably). This program sends exactly those, with the
gateway's own code (common.ratelimit_redis, common.admit_pg, common.ledger_pg), from one asyncio
process on uvloop, one after another, and beside them the cheapest round trip each server allows
(`SELECT 1`, `PING`) and the settlement committed without waiting for the WAL flush (what
durability costs; the gateway never does that). Every kind runs once per iteration, in turn, so
a change in the machine's speed reaches them all alike.

Added to bench.chat's floor (the web stack and the upstream hop without authentication and
billing, measured there in the same way), the sum of the three is the least any code of this
design can add at c=1 on the machine in its current state. PostgreSQL: the database
`helyx_bench_round_trips`, dropped and created afresh, dropped again at the end; Redis: db 13,
flushed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable
from typing import Any

from bench import _procs

TZ = "UTC"
DB = "helyx_bench_round_trips"
PLANS = ["free", "plus", "pro", "ultra"]


def _setup(url: str) -> tuple[str, str]:
    """Migrate; one ultra account with a large top-up. Returns (key id, key secret)."""
    from common import accounts, billing, clock, ledger
    from common.db import make_engine
    from common.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    now = clock.now().timestamp()
    with engine.begin() as conn:
        account_id, key = accounts.create_account(conn, "round-trips@bench.local", "ultra",
                                                  day=billing.today(TZ), now=now)
        ledger.grant(conn, account_id, 10**14, now=now)
    engine.dispose()
    return key.id, key.secret


async def _measure(url: str, key_id: str, secret: str, iterations: int, warmup: int) -> dict[str, list[float]]:
    import psycopg
    import redis.asyncio

    from common import admit_pg, billing, keys, ledger_pg
    from common.db import libpq_conninfo
    from common.ids import new_id
    from common.ratelimit_redis import RedisSlidingWindow

    conninfo = libpq_conninfo(url)
    durable = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    unflushed = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    await unflushed.execute("SET synchronous_commit = off")
    client = redis.asyncio.Redis.from_url(_procs.REDIS_URL)
    window = RedisSlidingWindow(client, prefix="bench-rt")
    key_hash, day = keys.hash_key(secret), billing.today(TZ)
    times: dict[str, list[float]] = {name: [] for name in (
        "SELECT 1", "Redis PING", "rate limit (Redis script)", "admission (key + hold, one statement)",
        "settlement (durable, with its generation)", "settlement without the WAL flush (not used)")}

    async def timed(name: str, call: Awaitable[Any], keep: bool) -> Any:
        started = time.perf_counter()  # (the coroutine is made before: a fraction of a microsecond)
        result = await call
        if keep:
            times[name].append(time.perf_counter() - started)
        return result

    async def admit(conn: psycopg.AsyncConnection[Any]) -> str:
        admitted = await admit_pg.authenticate_and_reserve(
            conn, key_hash=key_hash, plans=PLANS, day=day, amount=100_000, purpose="chat:bench", now=time.time(),
            ttl=900)
        if admitted.hold_id is None:
            raise RuntimeError("the admission statement held nothing")
        return admitted.hold_id

    async def settle(conn: psycopg.AsyncConnection[Any], hold_id: str) -> None:
        now = time.time()
        generation = {"gid": new_id("chatcmpl"), "gkid": key_id, "model": "gpt-4o", "stream": False,
                      "gstatus": "succeeded", "pt": 12, "ct": 40, "est": False, "lat": 1, "err": None,
                      "created": now}
        settled = await ledger_pg.resolve_async(conn, hold_id, 52_000, now=now, description="bench",
                                                generation=generation, day=day)
        if settled is None:
            raise RuntimeError("the settlement statement did nothing")

    async def select_one() -> None:
        await (await durable.execute("SELECT 1")).fetchone()

    try:
        for i in range(warmup + iterations):
            keep = i >= warmup
            await timed("SELECT 1", select_one(), keep)
            await timed("Redis PING", client.ping(), keep)
            await timed("rate limit (Redis script)", window.hit("bench", 10**9, 60), keep)
            hold = await timed("admission (key + hold, one statement)", admit(durable), keep)
            await timed("settlement (durable, with its generation)", settle(durable, hold), keep)
            other = await admit(unflushed)
            await timed("settlement without the WAL flush (not used)", settle(unflushed, other), keep)
    finally:
        await durable.close()
        await unflushed.close()
        await client.aclose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    import uvloop

    _procs.install_signal_handlers()
    _procs.wait_for_postgres()
    url = _procs.fresh_pg_database(DB)
    _procs.flush_redis()
    try:
        key_id, secret = _setup(url)
        times = uvloop.run(_measure(url, key_id, secret, args.iterations, args.warmup))
    finally:
        _procs.drop_pg_database(DB)
        _procs.flush_redis()
    rows = [[name, len(values), _procs.pct(values, 50) * 1e3, _procs.pct(values, 90) * 1e3,
             _procs.pct(values, 99) * 1e3] for name, values in times.items()]
    path = ("rate limit (Redis script)", "admission (key + hold, one statement)",
            "settlement (durable, with its generation)")
    rows.append(["the three a chat request makes (sum of p50s)", "", sum(_procs.pct(times[n], 50) for n in path) * 1e3,
                 "", ""])
    print(f"# bench.round_trips: {_procs.machine_note()}\n")
    _procs.table(f"round trips at c=1, {args.iterations} iterations, every kind once per iteration, ms",
                 ["round trip", "n", "p50", "p90", "p99"], rows, digits=3)


if __name__ == "__main__":
    main()
