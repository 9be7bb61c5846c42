"""The gateway's upstream HTTP client alone: requests/s and client CPU per request against the fake
OpenAI upstream, at concurrency 1 and 64, for:

  * httpx as Helyx builds it (common.providers.http.build_http_client: one pool of 200),
  * the same, sharded over 16 clients of 8 connections (the quadratic pool scan cut down),
  * httpx over an aiohttp transport (PyPI httpx-aiohttp; adapters unchanged), when importable,
  * plain aiohttp, when importable.

    .venv/bin/python -m bench.upstream_client [--seconds 4] [--repeats 3]
    # optional contenders (not Helyx dependencies): pip install --target /tmp/bench-pkgs aiohttp httpx-aiohttp
    BENCH_EXTRA_PATH=/tmp/bench-pkgs .venv/bin/python -m bench.upstream_client

The client runs in this process on uvloop (as under uvicorn); the fake in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import _procs
from bench._procs import Proc

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello! Say something short."}]}


async def measure(post: Callable[[], Awaitable[Any]], conc: int, seconds: float) -> tuple[float, float]:
    for _ in range(20):
        await post()
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await post()
            done += 1

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return done / (time.perf_counter() - t0), (time.process_time() - cpu0) / max(1, done) * 1e6


async def contenders(url: str) -> list[tuple[str, Callable[[], Any], Callable[[], Awaitable[None]]]]:
    import httpx

    from common.providers.http import build_http_client

    made: list[tuple[str, Callable[[], Any], Callable[[], Awaitable[None]]]] = []

    def plain() -> Any:
        client = build_http_client(5, 120)
        return lambda: client.post(url, json=BODY), client.aclose

    def sharded() -> Any:
        clients = [build_http_client(5, 120, max_connections=8) for _ in range(16)]
        turn = itertools.cycle(clients)

        async def close() -> None:
            for c in clients:
                await c.aclose()
        return lambda: next(turn).post(url, json=BODY), close

    made.append(("httpx, one pool (Helyx today)", plain, None))  # type: ignore[arg-type]
    made.append(("httpx, 16 clients x 8 conns", sharded, None))  # type: ignore[arg-type]
    try:
        import aiohttp
        from httpx_aiohttp import AiohttpTransport

        def over_aiohttp() -> Any:
            client = httpx.AsyncClient(
                transport=AiohttpTransport(client=lambda: aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=200))),
                timeout=httpx.Timeout(connect=5, read=120, write=120, pool=120), trust_env=False)
            return lambda: client.post(url, json=BODY), client.aclose
        made.append(("httpx over aiohttp transport", over_aiohttp, None))  # type: ignore[arg-type]
    except ImportError:
        print("  (httpx-aiohttp not importable: skipped)")
    try:
        import aiohttp

        def native() -> Any:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))

            async def post() -> Any:
                async with session.post(url, json=BODY) as response:
                    return json.loads(await response.read())
            return post, session.close
        made.append(("aiohttp", native, None))  # type: ignore[arg-type]
    except ImportError:
        print("  (aiohttp not importable: skipped)")
    return made


async def run(url: str, seconds: float, repeats: int) -> list[list[Any]]:
    rows = []
    for name, make, _ in await contenders(url):
        for conc in (1, 64):
            rates, cpus = [], []
            for _ in range(repeats):
                post, close = make()
                rate, cpu = await measure(post, conc, seconds)
                await close()
                rates.append(rate)
                cpus.append(cpu)
            print(f"  {name:32} c={conc:<3} {_procs.median(rates):7.0f} req/s {_procs.median(cpus):6.0f} us CPU/req",
                  flush=True)
            rows.append([name, conc, _procs.median(rates), min(rates), max(rates), _procs.median(cpus)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _procs.install_signal_handlers()
    if os.environ.get("BENCH_EXTRA_PATH"):
        sys.path[:0] = os.environ["BENCH_EXTRA_PATH"].split(":")
    print(f"# bench.upstream_client: {_procs.machine_note()}", flush=True)
    port = _procs.free_port()
    fake = Proc("fake-upstream", [_procs.PYTHON, "-m", "tests.fakes.openai_upstream", "--port", str(port)],
                _procs.helyx_env())
    try:
        _procs.wait_http(port, "/v1/chat/completions", proc=fake)
        import uvloop

        rows = uvloop.run(run(f"http://127.0.0.1:{port}/v1/chat/completions", args.seconds, args.repeats))
    finally:
        fake.stop()
    _procs.table(f"upstream client alone vs the fake ({args.repeats} x {args.seconds:g} s, median)",
                 ["client", "concurrency", "req/s", "min", "max", "client CPU us/request"], rows, 0)


if __name__ == "__main__":
    main()
