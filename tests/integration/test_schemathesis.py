"""Schemathesis against a running `helyx serve`: every operation, positive and negative data, with an
API key, with the admin token, and without credentials. Checks: Schemathesis's defaults (no server
errors, responses that match their documented schema, status codes and content types, bad input
rejected, ...), configured in tests/schemathesis/schemathesis.toml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers_processes import HELYX, Processes, base_env

REPO = Path(__file__).resolve().parents[2]
ADMIN = "schemathesis-admin-token-0123456789"
CONFIG = REPO / "tests" / "schemathesis" / "schemathesis.toml"
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


def _run(api_url: str, *args: str, examples: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCHEMATHESIS_HOOKS": "tests.schemathesis.hooks",
           "NO_COLOR": "1"}
    argv = [SCHEMATHESIS, "--config-file", str(CONFIG), "run", f"{api_url}/openapi.json", "--workers", "2",
            "-n", str(examples), "--generation-deterministic", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=400, cwd=REPO)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    workdir = tmp_path_factory.mktemp("schemathesis")
    env = base_env(database_url=f"sqlite:///{workdir / 'helyx.db'}", storage_dir=workdir / "files",
                   admin_token=ADMIN, simulated_job_seconds=0, image_wait_seconds=10, rate_limit_free=1000000,
                   rate_limit_plus=1000000, rate_limit_pro=1000000, rate_limit_ultra=1000000)
    created = subprocess.run([HELYX, "account", "create", "fuzz@example.com", "--plan", "pro"], env=env,
                             cwd=workdir, check=True, capture_output=True, text=True, timeout=60)
    account = json.loads(created.stdout)
    subprocess.run([HELYX, "credits", "grant", account["account_id"], "100000000"], env=env, cwd=workdir,
                   check=True, capture_output=True, timeout=60)
    with Processes(workdir / "procs") as procs:
        yield procs.serve(env), account["api_key"]


@pytest.mark.timeout(420)
def test_with_an_api_key(served) -> None:  # type: ignore[no-untyped-def]
    api, key = served
    result = _run(api.url, "-H", f"Authorization: Bearer {key}", "--exclude-path-regex", "^/admin", examples=20)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.timeout(420)
def test_with_the_admin_token(served) -> None:  # type: ignore[no-untyped-def]
    api, _ = served
    result = _run(api.url, "-H", f"Authorization: Bearer {ADMIN}", "--include-path-regex", "^/admin", examples=20)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.timeout(420)
def test_without_credentials(served) -> None:  # type: ignore[no-untyped-def]
    api, _ = served
    result = _run(api.url, examples=8)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
