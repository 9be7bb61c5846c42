"""Fixtures of the `helyx` command tests: a fresh SQLite database behind HELYX_DATABASE_URL, the
CLI run in-process, an account made through it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from cli import run_commands
from cli.main import main
from common.db import dispose_engines, make_engine
from common.migrate import upgrade
from common.settings import reset_settings_cache
from tests.cli.helpers import ok_json
from tests.conftest import TEST_TZ


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """HELYX_DATABASE_URL on a fresh SQLite file; yields an engine of our own on the same file."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("HELYX_DATABASE_URL", url)
    monkeypatch.delenv("HELYX_REDIS_URL", raising=False)
    monkeypatch.setenv("HELYX_TIMEZONE", TEST_TZ)
    reset_settings_cache()
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()
    dispose_engines()
    reset_settings_cache()


@pytest.fixture(autouse=True)
def execs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """What a production-shape `helyx serve` would have exec'd (cli.run_commands.exec_process):
    in-process, the exec would replace pytest's own process."""
    calls: list[list[str]] = []
    monkeypatch.setattr(run_commands, "exec_process", lambda path, argv: calls.append(argv))
    return calls


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse: --help, bad arguments
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run



@pytest.fixture
def created(cli_db: Engine, run: Any) -> dict[str, Any]:
    return ok_json(run("account", "create", "ops@example.com", "--plan", "plus"))
