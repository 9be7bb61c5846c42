"""Two versions of the gateway in ONE run, interleaved block by block with the direct call: an A/B
the VM's swings cannot bias (they hit both sides of every round alike).

    git worktree add /tmp/old <commit> && ln -s "$PWD/.venv" /tmp/old/.venv
    .venv/bin/python -m bench.ab_chat --old /tmp/old --rounds 10

Both gateways (`uvicorn api.main:app --app-dir <tree>`, one worker each) share the fake upstream,
the PostgreSQL database, Redis and the account of bench/chat.py's Stack. Per round, each target
gets `--block` sequential requests on a fresh keep-alive connection (bench/_load.py). Printed: the
added p50/p99 of each version over the direct call, and each round's added p50, so the spread
shows. Optionally (`--load-seconds`), c=64 wrk runs over 64 accounts, alternating, with each
gateway's and PostgreSQL's CPU per request.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
from pathlib import Path
from typing import Any

from bench import _procs
from bench._chat_stack import MESSAGES, Stack, raw_request
from bench._drivers import run_load, run_wrk
from bench._procs import Proc


def _postgres_cpu() -> float:
    total = 0.0
    for pid in subprocess.run(["pgrep", "postgres"], capture_output=True, text=True).stdout.split():
        with contextlib.suppress(OSError, ValueError):  # a backend that just exited
            total += _procs.cpu_seconds(int(pid))
    return total


def _added(res: dict[str, Any], name: str, block: int) -> str:
    ms = 1e3
    g, d = res[name]["total"], res["direct"]["total"]
    rounds = [(_procs.pct(g[i:i + block], 50) - _procs.pct(d[i:i + block], 50)) * ms for i in range(0, len(g), block)]
    added_p50 = (_procs.pct(g, 50) - _procs.pct(d, 50)) * ms
    return (f"{name}: n {len(g)}, errors {res[name]['errors']}, added p50 {added_p50:.2f}"
            f" ms, added p99 {(_procs.pct(g, 99) - _procs.pct(d, 99)) * ms:.2f} ms; per round:"
            f" {' '.join(f'{r:.2f}' for r in rounds)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, type=Path, help="the other version's source tree (a git worktree)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=200)
    parser.add_argument("--load-seconds", type=float, default=0.0, help="c=64 wrk runs of this length (0: none)")
    parser.add_argument("--load-rounds", type=int, default=3)
    args = parser.parse_args()
    _procs.install_signal_handlers()
    _procs.wait_for_postgres()
    print(_procs.machine_note(), flush=True)
    stack = Stack()
    gateways: dict[str, tuple[Proc, int]] = {}
    try:
        for name, tree in (("old", args.old.resolve()), ("new", _procs.ROOT)):
            port = _procs.free_port()
            proc = Proc(f"ab-{name}", [str(_procs.VENV_BIN / "uvicorn"), "api.main:app", "--app-dir", str(tree),
                                       "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                                       "--log-level", "warning", *_procs.uvicorn_http(tree)], stack.env)
            _procs.wait_http(port, "/healthz", proc=proc)
            gateways[name] = (proc, port)
        body = {"model": "gpt-4o", "messages": MESSAGES}
        raws = {name: raw_request(port, "/api/v1/chat/completions", body, stack.key)
                for name, (_, port) in gateways.items()}
        direct = raw_request(stack.fake_port, "/v1/chat/completions", body, "sk")
        targets = {"direct": {"port": stack.fake_port, "raw": direct}}
        targets |= {name: {"port": port, "raw": raws[name]} for name, (_, port) in gateways.items()}
        res = run_load("seq", {"targets": targets, "rounds": args.rounds, "block": args.block, "warmup": 200,
                               "max_seconds": 1200})
        direct_p50 = _procs.pct(res["direct"]["total"], 50) * 1e3
        print(f"c=1, {args.rounds} rounds of {args.block}; direct p50 {direct_p50:.3f} ms")
        for name in gateways:
            print("  " + _added(res, name, args.block), flush=True)
        if args.load_seconds:
            for name, (_, port) in gateways.items():  # every account's key seen once by each
                run_wrk(port, raws[name], 64, 2, stack.many_keys)
            for _ in range(args.load_rounds):
                for name, (proc, port) in gateways.items():
                    cpu, pg = _procs.cpu_seconds(proc.pid), _postgres_cpu()
                    r = run_wrk(port, raws[name], 64, args.load_seconds, stack.many_keys)
                    n = max(1, r["requests"])
                    print(f"  c=64 {name}: {r['rps']:.0f} req/s, non-2xx {r['non_200']}, gateway CPU "
                          f"{(_procs.cpu_seconds(proc.pid) - cpu) / n * 1e3:.2f} ms/request, PostgreSQL "
                          f"{(_postgres_cpu() - pg) / n * 1e3:.2f} ms/request", flush=True)
    finally:
        for proc, _ in gateways.values():
            proc.stop()
        stack.stop()


if __name__ == "__main__":
    main()
