"""The Procfile's two lines, run as honcho or a service manager runs them (`sh -c <line>`, the venv
on PATH), in the production shape on real PostgreSQL and Redis: the web line takes its settings
from `.env` as every helyx command does (the shell that expanded ${HELYX_PORT} and the like did
not read it), and a broken catalog stops either line with one line on stderr, not a traceback
from uvicorn's import or a worker that boots and then fails every job."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.faults import isolated_redis_url
from tests.integration.helpers_processes import VENV_BIN, Processes, base_env, free_port, wait_ready

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]


def procfile_line(name: str) -> str:
    for line in (ROOT / "Procfile").read_text("utf-8").splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} line in the Procfile")


def line_env(pg_url: str, tmp_path: Path, **helyx: object) -> dict[str, str]:
    settings = {"database_url": pg_url, "redis_url": isolated_redis_url(), "simulate": 1,
                "storage_dir": tmp_path / "files", "secret_key": "procfile-signing-secret-0123456789abcdef"}
    env = base_env(**{**settings, **helyx})
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PORT", None)
    return env


def run_line(name: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> tuple[int | None, str]:
    """The line to its end: (exit code, stderr); None when it was still running at `timeout` (then
    its whole process group is killed: a worker that started leaves Dramatiq's processes behind)."""
    popen = subprocess.Popen(["sh", "-c", procfile_line(name)], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = popen.communicate(timeout=timeout)
        return popen.returncode, stderr
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.communicate()
        return None, f"the {name} line was still running after {timeout:g} s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)


def test_the_web_line_serves_with_its_settings_from_dotenv(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    with Processes(tmp_path / "procs") as procs:
        (procs.workdir / ".env").write_text(f"HELYX_PORT={port}\nHELYX_SHUTDOWN_GRACE_SECONDS=1.5\n", "utf-8")
        web = procs.start("web", ["sh", "-c", procfile_line("web")], line_env(pg_url, tmp_path), port)
        wait_ready(web, 60)
        assert "production shape (PostgreSQL + Redis)" in web.log()
        web.signal_group(signal.SIGTERM)
        assert web.popen.wait(30) in (0, 128 + signal.SIGTERM), web.log()


@pytest.mark.parametrize("name", ["web", "worker"])
def test_a_broken_catalog_stops_the_line_with_one_line(pg_url: str, tmp_path: Path, name: str) -> None:
    code, stderr = run_line(name, line_env(pg_url, tmp_path, catalog=tmp_path / "missing.toml"), tmp_path)
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith("helyx: error: invalid catalog:"), stderr
    assert "Traceback" not in stderr


def test_an_unusable_storage_directory_stops_the_worker_with_one_line(pg_url: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", "utf-8")
    code, stderr = run_line("worker", line_env(pg_url, tmp_path, storage_dir=blocker / "files"), tmp_path)
    assert code == 2, stderr
    assert stderr.strip().startswith("helyx: error: cannot use the storage directory:"), stderr
    assert "Traceback" not in stderr
