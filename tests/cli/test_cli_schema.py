"""`helyx` commands against a database without the Helyx schema, or at an older revision: only
`account create` (on a new database) and `migrate` change the schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from common.db import dispose_engines, make_engine
from common.settings import reset_settings_cache
from tests.cli.helpers import ok_json


@pytest.fixture
def bare_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """HELYX_DATABASE_URL on an empty SQLite file (no schema)."""
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    monkeypatch.setenv("HELYX_DATABASE_URL", url)
    monkeypatch.delenv("HELYX_REDIS_URL", raising=False)
    reset_settings_cache()
    engine = make_engine(url)
    with engine.connect():
        pass  # the file made, empty
    yield engine
    engine.dispose()
    dispose_engines()
    reset_settings_cache()


def _tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())


@pytest.mark.parametrize("argv", [["usage", "acct_x"], ["key", "revoke", "key_x"], ["credits", "grant", "acct_x", "5"],
                                  ["plan", "set", "acct_x", "pro"], ["key", "create", "acct_x"]])
def test_a_command_on_a_database_without_the_schema_refuses_and_creates_nothing(
        run: Any, bare_db: Engine, argv: list[str]) -> None:
    """A mistyped HELYX_DATABASE_URL gained every Helyx table, then "No account"."""
    code, _, err = run(*argv)
    assert code == 2 and "has no Helyx schema: is HELYX_DATABASE_URL the right one?" in err, err
    assert _tables(bare_db) == set()


def test_a_command_on_a_sqlite_file_that_is_not_there_refuses_and_makes_no_file(
        run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "typo" / "helyx.db"
    monkeypatch.setenv("HELYX_DATABASE_URL", f"sqlite:///{missing}")
    reset_settings_cache()
    try:
        code, _, err = run("usage", "acct_x")
    finally:
        dispose_engines()
        reset_settings_cache()
    assert code == 2 and "There is no database file at" in err, err
    assert not missing.exists() and not missing.parent.exists()


def test_account_create_makes_the_schema_of_a_new_database_and_says_where(
        run: Any, bare_db: Engine, tmp_path: Path) -> None:
    """Said on stderr, with the file's absolute path: run from another directory, the default
    relative SQLite URL made a second database silently, whose key `helyx serve` refused (a
    new-user review)."""
    code, out, err = run("account", "create", "first@example.com")
    made = ok_json((code, out, err))
    assert made["api_key"].startswith("hx-") and {"accounts", "alembic_version"} <= _tables(bare_db)
    assert f"made a new Helyx database at {tmp_path / 'bare.db'}" in err, err
    code, out, err = run("account", "create", "second@example.com")
    assert code == 0 and "made a new" not in err, err


def test_a_command_that_prints_a_key_says_which_database_holds_it(
        run: Any, bare_db: Engine, tmp_path: Path) -> None:
    """A second shell without the deployment's exports wrote the account to the default SQLite
    file, exit 0 and nothing said: its key was then refused by the production API (a new-user
    review). Said on stderr, the JSON on stdout left whole."""
    where = f"the key is in the database at {tmp_path / 'bare.db'}"
    made = ok_json(run("account", "create", "first@example.com"))
    code, out, err = run("account", "create", "second@example.com")
    assert code == 0 and where in err, err
    code, out, err = run("key", "create", made["account_id"])
    assert ok_json((code, out, err))["api_key"].startswith("hx-") and where in err, err
    code, out, err = run("usage", made["account_id"])
    assert code == 0 and "the key is in" not in err, err


def test_no_command_migrates_an_older_schema_but_migrate(run: Any, bare_db: Engine) -> None:
    """A newer release's `helyx usage` ran its migrations (one rewrites the ledger under a lock)."""
    from alembic import command

    from common.migrate import _config

    config = _config()
    with bare_db.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
        conn.commit()
    for argv in (["account", "create", "late@example.com"], ["usage", "acct_x"]):
        code, _, err = run(*argv)
        assert code == 2 and "schema is at revision 0003" in err and "run `helyx migrate`" in err, err
    with bare_db.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0003"
    assert ok_json(run("migrate")) and run("account", "create", "late@example.com")[0] == 0


def test_a_schema_a_newer_release_migrated_is_one_line_for_every_command(run: Any, cli_db: Engine) -> None:
    """A roll-back: `usage` advised `helyx migrate`, which (as serve and worker) then died in a traceback."""
    with cli_db.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    for argv in (["usage", "acct_x"], ["migrate"], ["account", "create", "x@example.com"]):
        code, out, err = run(*argv)
        assert (code, out) == (1, ""), (argv, code, out)
        assert err.startswith("helyx: error: This database's schema is at revision 0099, newer than this"), err
        assert "Traceback" not in err and "run `helyx migrate`" not in err and len(err.strip().splitlines()) == 1
    with cli_db.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0099"


@pytest.mark.parametrize("problem", ["parent_is_a_file", "not_a_database"])
def test_a_sqlite_path_that_cannot_be_a_database_is_one_line(run: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, problem: str) -> None:
    """A FileExistsError and a DatabaseError ('file is not a database') came out as tracebacks."""
    (tmp_path / "afile").write_text("hello")
    path = tmp_path / "afile" / "h.db" if problem == "parent_is_a_file" else tmp_path / "afile"
    monkeypatch.setenv("HELYX_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("HELYX_STORAGE_DIR", str(tmp_path / "files"))
    monkeypatch.delenv("HELYX_REDIS_URL", raising=False)
    reset_settings_cache()
    try:
        commands = [["account", "create", "x@example.com"], ["migrate"]]
        if problem == "not_a_database":  # (usage says at once that there is no file at a path through a file)
            commands.append(["usage", "acct_x"])
        else:  # serve: its lock file beside the database came first, in a traceback (an operator review)
            commands.append(["serve", "--port", "1"])
        for argv in commands:
            code, out, err = run(*argv)
            assert (code, out) == (1, ""), (argv, code, err)
            assert err.startswith("helyx: error: cannot use the database: "), err
            assert len(err.strip().splitlines()) == 1
    finally:
        dispose_engines()
        reset_settings_cache()


@pytest.mark.parametrize("configured", [
    "postgresql://helyx:s3cret@db.example:5432/helyx?sslmode=require",
    "postgres://helyx:s3cret@db.example/helyx?password=s3cret",
])
def test_a_servers_database_is_shown_as_configured_without_its_password(
        configured: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As HELYX_DATABASE_URL has it: the driver's form Helyx connects with (postgresql+psycopg://)
    is not what the operator wrote, and compared with their own setting looked like another one
    (a new-user review)."""
    from cli import admin_commands

    monkeypatch.setenv("HELYX_DATABASE_URL", configured)
    reset_settings_cache()
    try:
        shown = admin_commands._shown_database()
    finally:
        reset_settings_cache()
    assert shown == configured.replace("s3cret", "***"), shown
