"""The malloc arena limit, observed in a fresh process through glibc's own malloc_stats()."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

THREADS_MALLOCING = textwrap.dedent("""
    import ctypes, sys, threading
    from common.malloc_arenas import limit_malloc_arenas
    print(limit_malloc_arenas() if sys.argv[1] == "limit" else None, flush=True)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()  # all eight threads alive at once: none can take an exited thread's arena
        blocks = [libc.malloc(4096) for _ in range(200)]
        barrier.wait()
        for block in blocks:
            libc.free(block)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc.malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
""")


def _arenas(mode: str, env: dict[str, str], program: str = THREADS_MALLOCING) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", program, mode], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    return done.stdout.strip(), len(re.findall(r"^Arena \d+:", done.stderr, re.MULTILINE))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    return {**env, **extra}


def test_eight_threads_share_two_arenas_once_limited() -> None:
    assert _arenas("limit", _env()) == ("True", 2)


def test_without_the_limit_each_thread_gets_its_own_arena() -> None:
    said, arenas = _arenas("none", _env())
    assert said == "None" and arenas > 2  # what the limit saves: this machine's glibc makes one per thread


def test_an_operators_malloc_arena_max_is_left_as_it_is() -> None:
    assert _arenas("limit", _env(MALLOC_ARENA_MAX="4")) == ("False", 4)
    assert _arenas("limit", _env(GLIBC_TUNABLES="glibc.malloc.arena_max=3")) == ("False", 3)


@pytest.mark.parametrize("entry_point", ["api.main", "workers.boot"])
def test_the_api_and_worker_processes_limit_their_arenas(entry_point: str, tmp_path: Path) -> None:
    """What `uvicorn api.main:app` and each `helyx worker` process import first."""
    program = THREADS_MALLOCING.replace("from common.malloc_arenas import limit_malloc_arenas",
                                        f"import {entry_point}\nlimit_malloc_arenas = lambda: 'imported'")
    env = _env(HELYX_DATABASE_URL=f"sqlite:///{tmp_path}/helyx.db", HELYX_STORAGE_DIR=str(tmp_path / "files"))
    assert _arenas("limit", env, program) == ("imported", 2)
