"""The gateway's upstream HTTP client alone: requests/s and client CPU per request against the fake
OpenAI upstream, at concurrency 1 and 64, for:

  * the client as the chat adapters use it (common.providers.http.UpstreamClient.post_json: the
    aiohttp session of httpx-aiohttp's transport called directly, the answer wrapped in an
    httpx.Response; common.providers.aiohttp_transport),
  * the same client through httpx's client API (`client.post`: cookies, auth, redirects, merging),
  * httpx with its own pool of 200 (what Helyx used before: httpcore's pool scan is quadratic),
  * aiohttp alone (the floor for Python).

    .venv/bin/python -m bench.upstream_client [--seconds 4] [--repeats 3]

The client runs in this process on uvloop (as under uvicorn); the fake in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
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
    import aiohttp
    import httpx

    from common.providers.http import build_http_client

    made: list[tuple[str, Callable[[], Any], Callable[[], Awaitable[None]]]] = []

    def helyx() -> Any:
        client = build_http_client(5, 120)
        return lambda: client.post_json(url, BODY, {}), client.aclose

    def httpx_client_layer() -> Any:
        client = build_http_client(5, 120)
        return lambda: client.post(url, json=BODY), client.aclose

    def httpx_pool() -> Any:
        client = httpx.AsyncClient(timeout=httpx.Timeout(connect=5, read=120, write=120, pool=120), trust_env=False,
                                   limits=httpx.Limits(max_connections=200, max_keepalive_connections=200))
        return lambda: client.post(url, json=BODY), client.aclose

    def native() -> Any:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))

        async def post() -> Any:
            async with session.post(url, json=BODY) as response:
                return json.loads(await response.read())
        return post, session.close

    made.append(("Helyx (post_json: aiohttp session, httpx answer)", helyx, None))  # type: ignore[arg-type]
    made.append(("httpx client API over the same transport", httpx_client_layer, None))  # type: ignore[arg-type]
    made.append(("httpx, its own pool of 200", httpx_pool, None))  # type: ignore[arg-type]
    made.append(("aiohttp alone", native, None))  # type: ignore[arg-type]
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
