"""bench/jobs.py's py-spy profiles: how they are recorded, and the phases their samples are
attributed to (a worker process in the burst; the API in the burst and under polls)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from bench import _procs
from bench._profile import ANCHORS, summarize_profile

WORKER_PHASES = [
    ("render PNG (simulated provider)", r"^(render_png|render_image|_png|_draw_caption) \("),
    ("claim (job + plan with account lock, capped UPDATE)", r"^claim \(.*common/jobs/lifecycle"),
    ("succeed (job row + file row + settle)", r"^succeed \(.*common/jobs/lifecycle"),
    ("store the file", r"^_store \(|common/storage\.py"),
    ("lease heartbeat", r"^_heartbeat \("),
    ("per-job asyncio.run + httpx client + providers", r"^_produce \(|^build_http_client|/asyncio/runners|/httpx/"),
    ("webhook actor / notify", r"workers/notify\.py|deliver_webhook"),
    ("sweeper thread", r"workers/sweeper\.py|common/jobs/recovery\.py"),
    ("dramatiq (consume, ack, middleware)", r"/dramatiq/"),
    ("redis-py", r"/redis/"),
]


def summarize(path: Path, anchors: list[tuple[str, str]] = WORKER_PHASES,
              generic: list[tuple[str, str]] | None = None) -> list[list[Any]]:
    return summarize_profile(path, anchors, generic or [])[0]


API_ANCHORS = [
    ("load_job (job + files queries)", r"^load_job \("),
    ("available (balance query)", r"^available \(/common/billing"),
    ("job_view + signed URLs", r"^(job_view|_file_view|url|sign_file_url) \("),
    ("submit_job (reserve + job row)", r"^submit_job \("),
    ("enqueue (Dramatiq -> Redis)", r"^enqueue \(/workers/|/dramatiq/"),
    *ANCHORS,
]


def profile_gil(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy, GIL-holding samples only: a thread waiting on a socket or in time.sleep is not CPU
    (without --gil py-spy counted a worker's BLPOP and busy pauses as active, ~25 % of samples)."""
    return subprocess.Popen([str(_procs.VENV_BIN / "py-spy"), "record", "--pid", str(pid), "--duration",
                             str(int(seconds)), "--rate", "200", "--gil", "--format", "raw", "--output", str(out),
                             "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
