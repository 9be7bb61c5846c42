"""py-spy profiles for the benchmarks: record a process, then attribute each sample to a request
phase (the deepest Helyx function that owns the work, else the framework layer) and to the library
of its innermost frame. Used by bench/chat.py and bench/jobs.py."""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import _procs

# A sample's phase: the deepest ANCHOR on its stack (a Helyx function that owns the work), else the
# deepest GENERIC frame (framework layers), else "other". Paths are rooted (see rooted).
ANCHORS = [
    ("threadpool handoff (anyio)", r"^(run_in_threadpool|run_sync|run_sync_in_worker_thread) \("),
    ("auth: key query + reset + touch", r"^(_authenticate|authenticate|get_principal|bearer) \(/api/deps\.py"),
    ("reserve (ledger)", r"^reserve_chat(_async)?[ .]"),
    ("settle + generation insert", r"^(finish_chat|finish_chat_async|_settle) \("),
    ("hold sweeper", r"^(_sweep_holds|expire_holds) \("),
    # redis-py's frames are not an anchor: under a job submission they are the Dramatiq send's (bench.jobs
    # counted them as the rate limit's, 22 % of the API's samples where the rate limit had 12 %)
    ("rate limit (limits + redis)", r"/common/ratelimit(_redis)?\.py|/limits/"),
    ("upstream call (adapter + httpx)", r"/common/providers/"),
    ("response JSON + SSE", r"/api/responses\.py|/api/sse\.py"),
    ("chat flow own code",
     r"/api/chat_(flow|call|stream)\.py|/common/chat_billing\.py|/common/tokens\.py|/api/schemas/"),
]
GENERIC = [
    ("upstream call (adapter + httpx)", r"/httpcore/|/httpx/|/h11/|/aiohttp/"),  # a stack cut short, or a
    # callback of the upstream connection run by the event loop (aiohttp's data_received)
    ("redis-py, no Helyx frame above it", r"/redis/"),
    ("DB work, stack cut short by the sampler", r"/psycopg/|/sqlalchemy/|/common/pg_async\.py"),
    ("FastAPI deps, body parse, validation", r"/fastapi/dependencies/|/fastapi/routing\.py|/pydantic|/fastapi/_"),
    ("errors/middleware/metrics (own)", r"/api/middleware\.py|/api/errors\.py|/api/observability\.py|/prometheus"),
    ("starlette routing/responses", r"/starlette/"),
    ("threadpool handoff (anyio)", r"/anyio/to_thread|run_sync_in_worker_thread|WorkerThread|^run_in_threadpool|"
                                   r"/threading\.py|/queue\.py|/concurrent/futures"),
    ("uvicorn HTTP protocol", r"/uvicorn/|httptools"),
    ("event loop (asyncio/uvloop)", r"/asyncio/|uvloop"),
]
PHASES = ANCHORS + GENERIC


def classify(frames: list[str], anchors: list[tuple[str, str]] = ANCHORS,
             generic: list[tuple[str, str]] = GENERIC) -> str:
    for patterns in (anchors, generic):
        for frame in reversed(frames):
            hit = next((label for label, pat in patterns if re.search(pat, frame)), None)
            if hit:
                return hit
    return "other"


LIBS = [("psycopg (driver)", r"/psycopg/"), ("SQLAlchemy", r"/sqlalchemy/"),
        ("httpx/httpcore/h11", r"/httpx/|/httpcore/|/h11/"), ("aiohttp (upstream connections)", r"/aiohttp/"),
        ("redis-py + limits", r"/redis/|/limits/"), ("pydantic", r"/pydantic"), ("FastAPI", r"/fastapi/"),
        ("starlette", r"/starlette/"), ("uvicorn", r"/uvicorn/|httptools"), ("anyio", r"/anyio/"),
        ("asyncio/uvloop", r"asyncio/|uvloop"), ("Helyx code (api/, common/)", r"\(/(api|common|workers)/"),
        ("logging + python-json-logger", r"/logging/|/pythonjsonlogger/"),
        ("prometheus_client", r"/prometheus_client/"), ("json/orjson", r"json"),
        ("threading/queue/other stdlib", r"\.py")]  # also any library not named above


def profile(pid: int, seconds: float, out: Path) -> Path | None:
    spy = _procs.VENV_BIN / "py-spy"
    if not spy.exists():
        print("  (py-spy not installed in the venv: no profile)")
        return None
    for _ in range(3):  # py-spy sometimes fails to attach on the first try
        res = subprocess.run([str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
                              "--gil", "--format", "raw", "--output", str(out), "--nonblocking"],
                             capture_output=True, text=True, timeout=seconds + 60)
        if res.returncode == 0 and out.exists():
            return out
        time.sleep(1)
    print(f"  (py-spy failed: {res.stderr[-500:]})")
    return None


def rooted(frame: str) -> str:
    """py-spy prints paths relative to sys.path ("httpx/_client.py"): give them a leading slash, so
    the patterns can anchor on directory names."""
    return frame.replace(" (", " (/", 1)


def summarize_profile(path: Path, anchors: list[tuple[str, str]] = ANCHORS,
                      generic: list[tuple[str, str]] = GENERIC) -> tuple[list[list[Any]], list[list[Any]], int]:
    """Samples by phase and by library (each row: name, samples, %), and the sample count."""
    phases: Counter[str] = Counter()
    libs: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [rooted(f) for f in stack.split(";")]
        phases[classify(frames, anchors, generic)] += n
        leaf = frames[-1] if frames else ""
        libs[next((label for label, pat in LIBS if re.search(pat, leaf)), "C/other")] += n
    return ([[k, v, v / total * 100] for k, v in phases.most_common()],
            [[k, v, v / total * 100] for k, v in libs.most_common()], total)
