"""Chat completions in the production shape: gateway vs. direct-to-upstream, side by side.

    .venv/bin/python -m bench.chat                          # 1 then 2 uvicorn workers, profile on 1
    .venv/bin/python -m bench.chat --workers 1 --rounds 5 --no-profile

Processes (all on 127.0.0.1, all killed at the end): the fast fake OpenAI upstream
(tests/fakes/openai_upstream, its own uvicorn process), the gateway (`uvicorn api.main:app`,
1 then 2 workers, as the Procfile runs it) on PostgreSQL (database helyx_bench_chat, made afresh)
and Redis db 13 (flushed), model gpt-4o pointed at the fake through HELYX_CATALOG, rate limits
raised out of the way, HELYX_SIMULATE=0; an ultra account made with `helyx account create` and
`helyx credits grant`.

Measured, gateway and direct in the same run, interleaved block by block:
  * c=1 latency: `--block` sequential requests per target per round, `--rounds` rounds
    (raw-socket keep-alive client in its own process: bench/_load.py);
  * streaming time to the first body byte (the first SSE event) at c=1;
  * the floor at c=1: bench/_floor_app.py (the same app, route, body model, adapter and upstream
    client, without authentication, rate limit and billing), interleaved with the two others;
  * throughput at c=64: wrk (or bench/_load.py's asyncio client when wrk is absent),
    alternating direct and gateway, `--load-rounds` times `--load-seconds`;
  * peak RSS (VmHWM) and CPU of every gateway process;
  * wall-time attribution per phase at c=1 (bench/_timed_app.py), and a py-spy profile of one
    worker at c=64 (GIL-holding samples, grouped by request phase and by library).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import _procs
from bench._chat_stack import Stack
from bench._drivers import run_load, run_wrk
from bench._profile import summarize_profile


def sequential(stack: Stack, rounds: int, block: int, stream: bool) -> dict[str, Any]:
    return run_load("seq", {"targets": stack.targets(stream), "rounds": rounds, "block": block, "warmup": 200,
                            "expect": "[DONE]" if stream else "", "max_seconds": 400})


# --- c=64 -------------------------------------------------------------------------------------

def throughput(stack: Stack, target: str, connections: int, seconds: float) -> dict[str, Any]:
    """target: direct | gateway (one hot account) | gateway-many (64 accounts)."""
    many = target == "gateway-many"
    t = stack.targets()["gateway" if many else target]
    if shutil.which("wrk"):
        return run_wrk(t["port"], t["raw"], connections, seconds, stack.many_keys if many else None)
    targets = stack.targets()
    if many:
        targets["gateway-many"] = {"port": t["port"], "raws": [t["raw"].replace(stack.key, k) for k in stack.many_keys]}
    res = run_load("conc", {"targets": targets, "target": target, "connections": connections,
                            "seconds": seconds})
    res["p50"] = res["p50"] * 1e3 if res["p50"] else None
    res["p99"] = res["p99"] * 1e3 if res["p99"] else None
    res["tool"] = "python"
    return res


# --- the run ----------------------------------------------------------------------------------

def c1_rows(res: dict[str, Any], workers: int, key: str, label: str, block: int,
            target: str = "gateway") -> list[list[Any]]:
    d, g = res["direct"][key], res[target][key]
    rounds_d = [d[i:i + block] for i in range(0, len(d), block)]
    rounds_g = [g[i:i + block] for i in range(0, len(g), block)]
    per_round_added = [(_procs.pct(rg, 50) - _procs.pct(rd, 50)) * 1e3
                       for rd, rg in zip(rounds_d, rounds_g, strict=False)]
    dp50, dp99 = _procs.pct(d, 50) * 1e3, _procs.pct(d, 99) * 1e3
    gp50, gp99 = _procs.pct(g, 50) * 1e3, _procs.pct(g, 99) * 1e3
    return [[f"{workers}", label, len(g), dp50, gp50, gp50 - dp50, _procs.median(per_round_added),
             dp99, gp99, gp99 - dp99, gp50 / dp50, res[target]["errors"]]]


def run(args: argparse.Namespace) -> None:
    _procs.wait_for_postgres()
    stack = Stack()
    stack.app = args.app
    if args.extra_path:
        stack.env["PYTHONPATH"] = args.extra_path
    c1, stream_rows, load_rows, mem_rows, tables = [], [], [], [], []
    try:
        if args.only_profile:
            stack.start_gateway(1)
            tables = profile_phase(stack, args) + profile_c1(stack, args)
            if args.output:
                Path(args.output).write_text(f"# bench.chat --only-profile: {_procs.machine_note()}; app {args.app}\n"
                                             + "\n".join(tables) + "\n")
            return
        for workers in args.workers:
            stack.start_gateway(workers)
            print(f"## gateway with {workers} worker(s) on :{stack.gateway_port}, fake on :{stack.fake_port}",
                  flush=True)
            if args.floor and workers == args.workers[0]:
                stack.start_floor()
            cpu0 = sum(_procs.cpu_seconds(p) for p in stack.worker_pids())
            res = sequential(stack, args.rounds, args.block, stream=False)
            c1_cpu = (sum(_procs.cpu_seconds(p) for p in stack.worker_pids()) - cpu0) / (
                200 + args.rounds * (args.block + 1)) * 1e3
            print(f"  c=1 gateway CPU per request: {c1_cpu:.2f} ms (all workers)", flush=True)
            c1 += c1_rows(res, workers, "total", "plain, total", args.block)
            if "floor" in res:
                c1 += c1_rows(res, workers, "total", "floor: no auth, no billing (bench/_floor_app.py)", args.block,
                              target="floor")
                stack.stop_floor()
            sres = sequential(stack, max(1, args.rounds // 2), args.block, stream=True)
            stream_rows += c1_rows(sres, workers, "ttfb", "stream, first byte", args.block)
            stream_rows += c1_rows(sres, workers, "total", "stream, total", args.block)
            print(f"  c=1 done: gateway p50 {_procs.pct(res['gateway']['total'], 50) * 1e3:.2f} ms, "
                  f"direct p50 {_procs.pct(res['direct']['total'], 50) * 1e3:.2f} ms; "
                  f"errors {res['gateway']['errors']} {res['gateway']['sample'][:200]}", flush=True)
            order = ("direct", "gateway-many", "gateway")
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in order}
            for _ in range(args.load_rounds):
                for target in order:
                    pids = stack.worker_pids() if target != "direct" else [stack.fake.pid]
                    before = {p: _procs.cpu_seconds(p) for p in pids}
                    machine = _procs.machine_cpu()
                    r = throughput(stack, target, args.connections, args.load_seconds)
                    r["cpu"] = {p: (_procs.cpu_seconds(p) - before[p]) / args.load_seconds for p in pids}
                    r["machine"] = _procs.busy_percent(machine, _procs.machine_cpu())
                    runs[target].append(r)
                    print(f"  c={args.connections} {target:12} {r['rps']:8.0f} req/s p50 {r['p50']} ms "
                          f"non-200 {r['non_200']} cpu {[round(v * 100) for v in r['cpu'].values()]}% "
                          f"machine {r['machine']:.0f}% busy", flush=True)
            labels = {"direct": "direct to the fake", "gateway-many": "gateway, 64 accounts",
                      "gateway": "gateway, 1 hot account"}
            for target in order:
                rs = runs[target]
                rates = [r["rps"] for r in rs]
                cpus = [sum(r["cpu"].values()) for r in rs]
                load_rows.append([workers, labels[target], rs[0]["tool"], _procs.median(rates), min(rates), max(rates),
                                  _procs.median(rates) / (workers if target != "direct" else 1),
                                  _procs.median([r["p50"] for r in rs]), _procs.median([r["p99"] for r in rs]),
                                  _procs.median(cpus) * 100,
                                  _procs.median([sum(r["cpu"].values()) * args.load_seconds
                                                 / max(1, r["requests"]) * 1e3 for r in rs]),
                                  _procs.median([r["machine"] for r in rs]),
                                  sum(r["non_200"] for r in rs)])
            d = _procs.median([r["rps"] for r in runs["direct"]])
            for target in ("gateway-many", "gateway"):
                g = _procs.median([r["rps"] for r in runs[target]])
                load_rows.append([workers, f"ratio {labels[target]} / direct", "", g / d, *[""] * 9])
            if workers == args.workers[0] and args.profile:
                tables += profile_phase(stack, args)
                tables += profile_c1(stack, args)
            for pid in dict.fromkeys([stack.gateway.pid, *stack.worker_pids()]) if stack.gateway else []:
                rss, hwm = _procs.memory_mb(pid)
                role = "uvicorn master" if pid == stack.gateway.pid and workers > 1 else "uvicorn worker"  # type: ignore[union-attr]
                mem_rows.append([workers, role, pid, rss, hwm])
            rss, hwm = _procs.memory_mb(stack.fake.pid)
            mem_rows.append([workers, "fake upstream", stack.fake.pid, rss, hwm])
            stack.stop_gateway()
        if args.attribution:
            tables.append(attribution(stack, args))
    finally:
        stack.stop()
    out = [f"# bench.chat: {_procs.machine_note()}; app {args.app}",
           _procs.table("c=1, non-streaming: latency in ms (gateway vs direct to the fake, same run)",
                        ["workers", "what", "n", "direct p50", "gateway p50", "added p50",
                         "added p50 (median of rounds)",
                         "direct p99", "gateway p99", "added p99", "ratio p50", "errors"], c1),
           _procs.table("c=1, streaming: ms to the first SSE byte and to the end",
                        ["workers", "what", "n", "direct p50", "gateway p50", "added p50",
                         "added p50 (median of rounds)",
                         "direct p99", "gateway p99", "added p99", "ratio p50", "errors"], stream_rows),
           _procs.table(f"c={args.connections}, non-streaming: throughput ({args.load_rounds} x "
                        f"{args.load_seconds:g} s "
                        "each, alternating; median)",
                        ["workers", "target", "tool", "req/s", "min", "max", "req/s per process", "p50 ms", "p99 ms",
                         "CPU % (its processes)", "CPU ms/request", "machine busy %", "non-200"], load_rows),
           _procs.table("peak RSS (VmHWM) after the runs, MB", ["workers", "process", "pid", "RSS now", "peak RSS"],
                        mem_rows, 1),
           *tables]
    if args.output:
        Path(args.output).write_text("\n".join(out) + "\n")


def profile_c1(stack: Stack, args: argparse.Namespace) -> list[str]:
    """py-spy --gil on the worker during sequential (c=1) gateway requests: where a lone request's
    CPU goes."""
    pid = stack.worker_pids()[0]
    out = _procs.WORKDIR / "chat-profile-c1.txt"
    spy = subprocess.Popen([_procs.PYTHON, "-c", "from bench._profile import profile; from pathlib import Path; "
                            f"profile({pid}, {args.profile_seconds}, Path({str(out)!r}))"], cwd=_procs.ROOT)
    time.sleep(1)
    before = _procs.cpu_seconds(pid)
    t0 = time.monotonic()
    res = run_load("seq", {"targets": {"gateway": stack.targets()["gateway"]}, "rounds": 1000, "block": 50,
                           "warmup": 0, "max_seconds": args.profile_seconds - 1})
    served = len(res["gateway"]["total"]) + res["gateway"]["errors"]
    cpu = _procs.cpu_seconds(pid) - before
    spy.wait(timeout=args.profile_seconds + 90)
    if not out.exists():
        return []
    phases, libs, total = summarize_profile(out)
    rounds = len(res["gateway"]["total"]) // 50 + 1
    per_req_us = cpu / max(1, served + rounds) * 1e6
    if args.keep_profile:
        shutil.copy(out, str(args.keep_profile) + ".c1")
    return [
        _procs.table(f"py-spy --gil, 1 worker at c=1 ({served / (time.monotonic() - t0):.0f} req/s while sampled, "
                     f"{total} samples; worker CPU {per_req_us:.0f} us per request)",
                     ["phase (owning Helyx function, else framework layer)", "samples", "% of GIL time",
                      "~us per request"], [[p, n, pc, pc / 100 * per_req_us] for p, n, pc in phases], 1),
        _procs.table("the same samples by library of the innermost frame", ["library", "samples", "%",
                                                                              "~us per request"],
                     [[p, n, pc, pc / 100 * per_req_us] for p, n, pc in libs], 1),
    ]


def profile_phase(stack: Stack, args: argparse.Namespace) -> list[str]:
    pid = stack.worker_pids()[0]
    print(f"  profiling worker {pid} under c={args.connections} for {args.profile_seconds:g} s", flush=True)
    out = _procs.WORKDIR / "chat-profile.txt"
    spy = subprocess.Popen([_procs.PYTHON, "-c", "from bench._profile import profile; from pathlib import Path; "
                            f"profile({pid}, {args.profile_seconds}, Path({str(out)!r}))"], cwd=_procs.ROOT)
    time.sleep(1)
    before = _procs.cpu_seconds(pid)
    r = throughput(stack, "gateway-many", args.connections, args.profile_seconds)
    cpu = (_procs.cpu_seconds(pid) - before)
    spy.wait(timeout=args.profile_seconds + 90)
    if not out.exists():
        return []
    phases, libs, total = summarize_profile(out)
    per_req_us = cpu / max(1, r["requests"]) * 1e6
    if args.keep_profile:
        shutil.copy(out, args.keep_profile)
    return [
        _procs.table(f"py-spy --gil, 1 worker at c={args.connections}, 64 accounts ({r['rps']:.0f} req/s while "
                     "sampled): GIL-holding "
                     f"samples by request phase ({total} samples; worker CPU {per_req_us:.0f} us per request)",
                     ["phase (deepest matching frame)", "samples", "% of GIL time", "~us per request"],
                     [[p, n, pc, pc / 100 * per_req_us] for p, n, pc in phases], 1),
        _procs.table("the same samples by library of the innermost Python frame",
                     ["library", "samples", "%", "~us per request"],
                     [[p, n, pc, pc / 100 * per_req_us] for p, n, pc in libs], 1),
    ]


def attribution(stack: Stack, args: argparse.Namespace) -> str:
    stack.start_gateway(1, app="bench._timed_app:app")
    port = stack.gateway_port
    run_load("seq", {"targets": {"gateway": stack.targets()["gateway"]}, "rounds": 1, "block": 10, "warmup": 200})
    subprocess.run(["curl", "-s", "-X", "DELETE", f"http://127.0.0.1:{port}/bench/timings"], capture_output=True)
    res = run_load("seq", {"targets": stack.targets(), "rounds": args.rounds, "block": args.block, "warmup": 50})
    timings = json.loads(subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/bench/timings"],
                                        capture_output=True, text=True).stdout)
    stack.stop_gateway()
    direct = _procs.pct(res["direct"]["total"], 50) * 1e3
    client = _procs.pct(res["gateway"]["total"], 50) * 1e3
    ordered = sorted(timings.items(), key=lambda kv: (kv[0].startswith("#"), -kv[1]["mean_ms"]))
    rows: list[list[Any]] = [[k, v["n"], v["p50_ms"], v["mean_ms"]] if not k.startswith("#") else
                             [k[1:] + " per request", v["n"], v["p50_ms"] / 1e3, v["mean_ms"] / 1e3]
                             for k, v in ordered]
    rows.append(["(client-side total, gateway)", len(res["gateway"]["total"]), client, ""])
    rows.append(["(client-side total, direct to the fake)", len(res["direct"]["total"]), direct, ""])
    return _procs.table("c=1 wall time by phase inside one gateway worker (bench/_timed_app.py timers), ms",
                        ["phase", "n", "p50 ms", "mean ms"], rows, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=10, help="c=1 rounds (each: a block per target)")
    parser.add_argument("--block", type=int, default=200, help="c=1 requests per target per round")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--load-seconds", type=float, default=8.0)
    parser.add_argument("--load-rounds", type=int, default=3)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile-seconds", type=float, default=12.0)
    parser.add_argument("--summarize", metavar="RAW", help="print the tables of a kept py-spy raw profile and exit")
    parser.add_argument("--only-profile", action="store_true", help="just the two py-spy profiles (c=64, c=1)")
    parser.add_argument("--keep-profile", help="copy py-spy's raw (collapsed) stacks here")
    parser.add_argument("--attribution", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="also time bench/_floor_app.py (no auth, no billing) at c=1, first worker count only")
    parser.add_argument("--app", default="api.main:app", help="the ASGI app uvicorn serves")
    parser.add_argument("--extra-path", help="PYTHONPATH for the gateway (packages a prototype needs)")
    parser.add_argument("--output", help="also write the tables (Markdown) to this file")
    args = parser.parse_args()
    if args.summarize:
        phases, libs, total = summarize_profile(Path(args.summarize))
        _procs.table(f"{args.summarize}: {total} samples by phase", ["phase", "samples", "%"], phases, 1)
        _procs.table("by library of the innermost frame", ["library", "samples", "%"], libs, 1)
        return
    _procs.install_signal_handlers()
    run(args)


if __name__ == "__main__":
    main()
