"""api.main, the ASGI entry point, arms a parent-death signal in a child of uvicorn's multiprocess
supervisor, and only there (common.parent_death)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest


def _import_main(storage: str) -> None:
    import os

    os.environ.update(HELYX_DATABASE_URL=f"sqlite:///{storage}/helyx.db", HELYX_STORAGE_DIR=storage)
    import api.main  # noqa: F401


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_multiprocessing_child_imports_it_and_lives(tmp_path: Path, method: str) -> None:
    """A forkserver's child has the forkserver as its kernel parent, not its multiprocessing
    parent: it exited with 143 at the import, taken for a child whose supervisor had died (a review)."""
    child = multiprocessing.get_context(method).Process(target=_import_main, args=(str(tmp_path),))
    child.start()
    child.join(60)
    assert child.exitcode == 0


_ORPHAN = """
import multiprocessing, os, sys, time
def child(marker, storage):
    time.sleep(1.5)  # a slow start: the supervisor dies meanwhile
    os.environ.update(HELYX_DATABASE_URL=f"sqlite:///{storage}/helyx.db", HELYX_STORAGE_DIR=storage)
    import api.main  # noqa: F401
    open(marker, "w").write("imported, serving on")
if __name__ == "__main__":
    multiprocessing.get_context("spawn").Process(target=child, args=sys.argv[1:3]).start()
    time.sleep(0.3)
    os._exit(0)  # the supervisor killed before its child is up
"""


def test_a_child_whose_supervisor_died_while_it_started_stops_at_the_import(tmp_path: Path) -> None:
    """Handed to init before it could arm the signal, it would serve on unsupervised (a review of
    the first version, which checked only the kernel parent)."""
    import subprocess
    import sys
    import time

    script, marker = tmp_path / "orphan.py", tmp_path / "marker"
    script.write_text(_ORPHAN)
    subprocess.run([sys.executable, str(script), str(marker), str(tmp_path)], check=True, timeout=30,
                   cwd=Path(__file__).resolve().parents[2])
    time.sleep(6)  # the child's start-up: 1.5 s of sleep, then the import
    assert not marker.exists()
