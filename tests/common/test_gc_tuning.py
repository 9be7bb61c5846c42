"""The collector is tuned once the process is ready: start-up objects frozen, young threshold
raised, and cyclic garbage made afterwards still collected without anyone calling gc.collect().
Each check runs in a fresh interpreter: freezing is per process and would leak into this one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from common.gc_tuning import YOUNG_THRESHOLD

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, env: dict[str, str] | None = None) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freeze_then_cycles_are_still_collected() -> None:
    result = run_python("""
import gc, json, weakref
from common.gc_tuning import YOUNG_THRESHOLD, freeze_startup_heap, tune_for_requests
freeze_startup_heap()
frozen = gc.get_freeze_count()
freeze_startup_heap()  # a second call changes nothing
tune_for_requests()
class Node:
    pass
first = Node(); first.me = first
probe = weakref.ref(first)
del first
for _ in range(YOUNG_THRESHOLD * 3):  # cyclic garbage only the collector can free
    n = Node(); n.me = n
print(json.dumps({"frozen": frozen, "again": gc.get_freeze_count(), "threshold": gc.get_threshold(),
                  "young": YOUNG_THRESHOLD, "collected": probe() is None}))
""")
    assert result["frozen"] > 1000
    assert result["again"] == result["frozen"]
    assert result["threshold"][0] == result["young"]
    assert result["collected"] is True


def test_the_api_freezes_when_it_starts(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "HELYX_DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}",
           "HELYX_STORAGE_DIR": str(tmp_path / "files")}
    result = run_python("""
import gc, json
at_start = gc.get_freeze_count()  # 0, or what the interpreter froze itself (375 on Python 3.12.1)
from fastapi.testclient import TestClient
from common.db import get_engine
from common.migrate import upgrade
from common.settings import get_settings
from api.app import create_app
upgrade(get_engine(get_settings().database_url))
before = gc.get_freeze_count()
with TestClient(create_app()) as client:
    status = client.get("/healthz").status_code
print(json.dumps({"at_start": at_start, "before": before, "after": gc.get_freeze_count(), "status": status,
                  "threshold": gc.get_threshold()[0]}))
""", env)
    assert result["before"] == result["at_start"]  # nothing froze before the app started
    assert result["after"] > result["at_start"] + 10_000
    assert (result["status"], result["threshold"]) == (200, 7_000)


def test_a_worker_process_freezes_before_its_threads_start(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "HELYX_DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}",
           "HELYX_STORAGE_DIR": str(tmp_path / "files")}
    env.pop("HELYX_REDIS_URL", None)
    result = run_python("""
import gc, json, threading
default = gc.get_threshold()[0]  # the interpreter's own (700; 2,000 from Python 3.13)
import dramatiq
import workers.boot
from common import gc_tuning
from workers.broker import broker
seen = {}
def spy():
    seen["threads"] = threading.active_count()
    seen["frozen"] = gc.get_freeze_count()
gc_tuning.log.debug = lambda *args: spy()  # called inside freeze_startup_heap, after the freeze
before = threading.active_count()
worker = dramatiq.Worker(broker, worker_threads=2)
worker.start()
worker.stop()
print(json.dumps({"before": before, **seen, "threshold": gc.get_threshold()[0], "default": default}))
""", env)
    assert result["frozen"] > 10_000
    assert result["threads"] == result["before"]  # no worker thread was running yet
    # workers keep the default: their garbage may hold video frames
    assert result["threshold"] == result["default"] != YOUNG_THRESHOLD
