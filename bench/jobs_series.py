"""bench.jobs's burst several times in a row, each beside its job floor: the spread, not one draw.

    .venv/bin/python -m bench.jobs_series --runs 5                # one account
    .venv/bin/python -m bench.jobs_series --runs 5 --accounts 16

This VM's speed moves by up to 1.5x within minutes, and one `bench.jobs` run is one burst of the
gateway and one of the floor, a minute apart: a single figure says more about the minute than the
code. Each run here is a whole `bench.jobs` (fresh database, processes started anew, the burst,
then the floor's burst), without the polls, the light load's length or the profiler; the table
gives every run's gateway and floor jobs/s, their ratio and the machine's CPU per job, then the
median and the best, and how many runs reached `--target` jobs/s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import _procs

GATEWAY_RATE = "jobs/s end to end (first created -> last finished)"
FLOOR_RATE = "floor: " + GATEWAY_RATE
GATEWAY_CPU = "machine CPU ms per job (busy x cores x burst time / jobs)"
FLOOR_CPU = "floor: machine CPU ms per job"


def figures(markdown: str) -> dict[str, float]:
    """The two-column rows of bench.jobs' tables (measure | value) whose value is a number."""
    found: dict[str, float] = {}
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2:
            continue
        try:
            found.setdefault(cells[0], float(cells[1].replace(",", "")))
        except ValueError:
            continue
    return found


def one_run(args: argparse.Namespace, output: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.jobs", "--jobs", str(args.jobs), "--accounts", str(args.accounts),
               "--light-jobs", "2", "--load-rounds", "1", "--load-seconds", "1", "--no-profile",
               "--output", str(output)]
    subprocess.run(command, cwd=_procs.ROOT, check=True, stdout=subprocess.DEVNULL, timeout=args.timeout)
    return figures(output.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--target", type=float, default=300.0, help="jobs/s (the media issue's target)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds, for each run")
    args = parser.parse_args()
    print(f"# bench.jobs_series: {_procs.machine_note()}", flush=True)
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="helyx-series-") as tmp:
        for run in range(1, args.runs + 1):
            got = one_run(args, Path(tmp) / f"run-{run}.md")
            rows.append([run, got[GATEWAY_RATE], got[FLOOR_RATE], got[GATEWAY_RATE] / got[FLOOR_RATE],
                         got[GATEWAY_CPU], got[FLOOR_CPU]])
            print(f"  run {run}: {got[GATEWAY_RATE]:.1f} jobs/s beside the floor's {got[FLOOR_RATE]:.1f}", flush=True)
    rates = [row[1] for row in rows]
    summary = [["median", *(_procs.median(row[i] for row in rows) for i in range(1, 6))],
               ["best (by gateway jobs/s)", *max(rows, key=lambda row: row[1])[1:]]]
    _procs.table(f"{args.runs} runs of bench.jobs: {args.jobs} image jobs of {args.accounts} account(s); "
                 f"{sum(rate >= args.target for rate in rates)} of {args.runs} at {args.target:g} jobs/s or more",
                 ["run", "gateway jobs/s", "floor jobs/s", "ratio", "gateway machine CPU ms/job",
                  "floor machine CPU ms/job"], [*rows, *summary])


if __name__ == "__main__":
    main()
