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
