"""A full `hx-` secret is shown once and stored nowhere: after a realistic flow through the API and
the CLI on real PostgreSQL, no secret appears in a dump of the database or in any log record."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from cli.main import main as cli
from common import keys
from common.db import dispose_engines
from common.settings import reset_settings_cache
from tests.conftest import ADMIN_TOKEN, make_settings

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ANY_KEY = re.compile(r"hx-[0-9A-Za-z]{46}")


@pytest.fixture
def pg_client(tmp_path: Path, pg_url: str, pg_engine: Engine) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app(make_settings(tmp_path, database_url=pg_url))) as client:
        yield client


def dump_database(engine: Engine, url: str) -> str:
    """pg_dump when it is installed (everything, as PostgreSQL stores it), else SELECT * of every table."""
    if shutil.which("pg_dump"):
        done = subprocess.run(["pg_dump", "--no-owner", f"--dbname={url}"], capture_output=True, text=True,
                              timeout=60, check=False)
        if done.returncode == 0:
            return done.stdout
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        return "\n".join(f"{t}: {[tuple(r) for r in conn.execute(text(f'SELECT * FROM {t}'))]}" for t in tables)


def log_text(records: list[logging.LogRecord]) -> str:
    """Every record as rendered, plus its raw arguments and extra fields."""
    return "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in records)


def test_no_secret_reaches_the_database_or_the_logs(
    pg_client: TestClient, pg_engine: Engine, pg_url: str, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = []

    # --- the API: an operator creates an account, its owner makes and revokes keys
    created = pg_client.post("/admin/accounts", json={"email": "owner@example.com", "plan": "plus"}, headers=ADMIN)
    assert created.status_code == 201
    first = created.json()["api_key"]
    secrets.append(first)
    owner = {"Authorization": f"Bearer {first}"}
    made = pg_client.post("/api/v1/keys", json={"name": "ci", "daily_credit_cap": 5}, headers=owner).json()
    second = made["key"]
    secrets.append(second)
    for headers in (owner, {"Authorization": f"Bearer {second}"}):
        for path in ("/api/v1/credits", "/api/v1/usage", "/api/v1/keys"):
            assert pg_client.get(path, headers=headers).status_code == 200
    assert pg_client.delete(f"/api/v1/keys/{made['id']}", headers=owner).status_code == 200
    assert pg_client.get("/api/v1/credits", headers={"Authorization": f"Bearer {second}"}).status_code == 401
    typo = first[:-1] + ("A" if first[-1] != "A" else "B")
    assert pg_client.get("/api/v1/credits", headers={"Authorization": f"Bearer {typo}"}).status_code == 401
    grant = pg_client.post(f"/admin/accounts/{created.json()['account_id']}/credits", json={"amount": 3},
                           headers=ADMIN)
    assert grant.status_code == 200

    # --- the CLI, on the same database
    monkeypatch.setenv("HELYX_DATABASE_URL", pg_url)
    reset_settings_cache()
    try:
        def run(*argv: str) -> dict[str, Any]:
            capsys.readouterr()
            assert cli(list(argv)) == 0
            return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

        account = run("account", "create", "cli@example.com", "--plan", "pro")
        secrets.append(account["api_key"])
        key = run("key", "create", account["account_id"], "--name", "deploy")
        secrets.append(key["api_key"])
        run("key", "revoke", key["key_id"])
        run("usage", account["account_id"])
        assert pg_client.get("/api/v1/credits",
                             headers={"Authorization": f"Bearer {account['api_key']}"}).status_code == 200
    finally:
        reset_settings_cache()
        dispose_engines()

    assert len(set(secrets)) == 4 and all(keys.is_well_formed(s) for s in secrets)
    dump = dump_database(pg_engine, pg_url)
    logs = log_text(caplog.records) + capsys.readouterr().err

    # the dump and the logs are real: keys, hashes and requests are in there
    assert all(keys.hash_key(s) in dump for s in secrets)
    assert all(keys.display_prefix(s) in dump for s in secrets)
    assert "owner@example.com" in dump and "cli@example.com" in dump
    assert caplog.records, "nothing was logged: the check below would prove nothing"

    for secret in secrets:
        assert secret not in dump, f"a full key ({keys.display_prefix(secret)}...) is stored in the database"
        assert secret[3:] not in dump
        assert secret not in logs, f"a full key ({keys.display_prefix(secret)}...) reached the logs"
        assert secret[3:] not in logs
    assert ANY_KEY.findall(dump) == []
    assert [k for k in ANY_KEY.findall(logs) if keys.is_well_formed(k)] == []
