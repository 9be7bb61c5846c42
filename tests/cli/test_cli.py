"""`helyx` operator commands in-process (SPEC §5): each prints JSON; bad input exits non-zero with a
clear message on stderr and changes nothing."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from cli.main import main
from common import accounts, keys
from common.db import dispose_engines, make_engine
from common.errors import AuthenticationFailed
from common.migrate import upgrade
from common.settings import reset_settings_cache

TABLES = ("accounts", "api_keys", "ledger_entries", "holds")


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """HELYX_DATABASE_URL on a fresh SQLite file; yields an engine of our own on the same file."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("HELYX_DATABASE_URL", url)
    monkeypatch.delenv("HELYX_REDIS_URL", raising=False)
    monkeypatch.setenv("HELYX_TIMEZONE", "Asia/Karachi")
    reset_settings_cache()
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()
    dispose_engines()
    reset_settings_cache()


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


def ok_json(result: tuple[int, str, str]) -> dict[str, Any]:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1"))] for t in TABLES}


@pytest.fixture
def created(cli_db: Engine, run: Any) -> dict[str, Any]:
    return ok_json(run("account", "create", "ops@example.com", "--plan", "plus"))


# ---------------------------------------------------------------- the commands


def test_migrate_says_whether_it_created_the_schema_or_found_it_up_to_date(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: Any) -> None:
    monkeypatch.setenv("HELYX_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    reset_settings_cache()
    try:
        first, again = ok_json(run("migrate")), ok_json(run("migrate"))
    finally:
        dispose_engines()
        reset_settings_cache()
    assert first["database"] == "created" and first["from"] is None and first["revision"]
    assert again == {"database": "up to date", "from": first["revision"], "revision": first["revision"]}


def test_account_create_prints_an_account_and_a_working_key(cli_db: Engine, created: dict[str, Any]) -> None:
    assert created["account_id"].startswith("acct_")
    assert keys.is_well_formed(created["api_key"])
    assert created["plan"] == "plus"
    principal = accounts.authenticate(cli_db, created["api_key"], now=0.0)
    assert (principal.account_id, principal.key_id, principal.plan) == (
        created["account_id"], created["key_id"], "plus")


def test_account_create_defaults_to_free(cli_db: Engine, run: Any) -> None:
    body = ok_json(run("account", "create", "free@example.com"))
    with cli_db.connect() as conn:
        plan = conn.execute(text("SELECT plan FROM accounts WHERE id = :a"), {"a": body["account_id"]}).scalar()
    assert plan == "free"


def test_key_create_and_revoke(cli_db: Engine, run: Any, created: dict[str, Any]) -> None:
    key = ok_json(run("key", "create", created["account_id"], "--name", "deploy", "--daily-cap", "50.5"))
    assert (key["account_id"], key["name"], key["daily_credit_cap"]) == (created["account_id"], "deploy", 50.5)
    assert accounts.authenticate(cli_db, key["api_key"], now=0.0).key_id == key["key_id"]
    with cli_db.connect() as conn:
        assert conn.execute(text("SELECT daily_cap FROM api_keys WHERE id = :k"),
                            {"k": key["key_id"]}).scalar() == 50_500_000

    assert ok_json(run("key", "revoke", key["key_id"])) == {"key_id": key["key_id"], "revoked": True}
    with pytest.raises(AuthenticationFailed) as caught:
        accounts.authenticate(cli_db, key["api_key"], now=0.0)
    assert caught.value.code == "revoked_api_key"
    assert accounts.authenticate(cli_db, created["api_key"], now=0.0)  # the other key is untouched


def test_credits_grant_with_and_without_a_reference(cli_db: Engine, run: Any, created: dict[str, Any]) -> None:
    first = ok_json(run("credits", "grant", created["account_id"], "25.5", "--reference", "inv-1"))
    assert (first["granted"], first["topup_balance"]) == (True, 25.5)
    again = ok_json(run("credits", "grant", created["account_id"], "25.5", "--reference", "inv-1"))
    assert (again["granted"], again["topup_balance"]) == (False, 25.5)
    before = snapshot(cli_db)
    code, out, err = run("credits", "grant", created["account_id"], "255", "--reference", "inv-1")  # a typo
    assert (code, out) == (2, "") and snapshot(cli_db) == before
    assert err.startswith("helyx: error: Reference 'inv-1' was already used for a grant of 25.5 credits to"), err
    plain = ok_json(run("credits", "grant", created["account_id"], "0.000001"))
    assert (plain["granted"], plain["topup_balance"]) == (True, 25.500001)
    with cli_db.connect() as conn:
        grants = conn.execute(text("SELECT amount FROM ledger_entries WHERE kind = 'grant' ORDER BY id")).scalars()
        assert list(grants) == [25_500_000, 1]


def test_plan_set(cli_db: Engine, run: Any, created: dict[str, Any]) -> None:
    body = ok_json(run("plan", "set", created["account_id"], "ultra"))
    assert (body["plan"], body["daily_allowance"], body["allowance_remaining"]) == ("ultra", 25_000, 25_000)
    with cli_db.connect() as conn:
        assert conn.execute(text("SELECT plan FROM accounts")).scalar() == "ultra"
    before = snapshot(cli_db)
    again = ok_json(run("plan", "set", created["account_id"], "ultra"))  # already ultra: nothing moves
    assert again["plan"] == "ultra" and snapshot(cli_db) == before


def test_usage(run: Any, created: dict[str, Any]) -> None:
    ok_json(run("credits", "grant", created["account_id"], "3"))
    body = ok_json(run("usage", created["account_id"], "--limit", "1"))
    assert (body["credits"]["account_id"], body["credits"]["topup_balance"]) == (created["account_id"], 3)
    assert [e["kind"] for e in body["ledger"]["data"]] == ["grant"]
    assert body["ledger"]["has_more"] is True
    rest = ok_json(run("usage", created["account_id"], "--after", str(body["ledger"]["next_cursor"])))
    assert [e["kind"] for e in rest["ledger"]["data"]] == ["reset"] and rest["ledger"]["has_more"] is False
    full = ok_json(run("usage", created["account_id"]))
    assert [e["kind"] for e in full["ledger"]["data"]] == ["grant", "reset"]


# ---------------------------------------------------------------- help


@pytest.mark.parametrize(
    "command",
    [[], ["serve"], ["worker"], ["migrate"], ["account"], ["account", "create"], ["key"], ["key", "create"],
     ["key", "revoke"], ["credits"], ["credits", "grant"], ["plan"], ["plan", "set"], ["usage"]],
)
def test_help_on_every_command_exits_0(run: Any, command: list[str]) -> None:
    code, out, err = run(*command, "--help")
    assert code == 0, err
    assert out.startswith("usage: helyx")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["account", "create", "x@example.com", "--plan", "gold"], "invalid choice: 'gold'"),
        (["account", "create", "not-an-email"], "is not an email address"),
        (["account", "create", "a" * 65 + "@example.com"], "at most 64 characters before the @"),
        (["account", "create", "a@" + "b" * 250 + ".com"], "254 in all"),
        (["account", "create", "ops@example.com"], "exists already"),
        (["account", "create", "Ops@Example.COM"], "exists already"),  # one mailbox, one account
        (["plan", "set", "{account}", "gold"], "invalid choice: 'gold'"),
        (["plan", "set", "acct_missing", "pro"], "No account acct_missing"),
        (["credits", "grant", "{account}", "-5"], "must be a positive"),
        (["credits", "grant", "{account}", "0"], "must be a positive"),
        (["credits", "grant", "{account}", "lots"], "AMOUNT must be a number of credits in plain decimal notation"),
        (["credits", "grant", "{account}", "1_0000"], "not '1_0000'"),  # Decimal reads it: 10,000
        (["credits", "grant", "{account}", "1e3"], "not '1e3'"),
        (["key", "create", "{account}", "--daily-cap", "5_0"], "--daily-cap must be a number of credits"),
        (["credits", "grant", "{account}", "0.0000001"], "0.0000001 credits is finer than one micro-credit (at most 6"),
        (["credits", "grant", "{account}", "1.2345678"], "finer than one micro-credit"),  # not rounded to fit
        (["credits", "grant", "{account}", "nan"], "AMOUNT"),
        (["credits", "grant", "{account}", "inf"], "AMOUNT"),
        (["credits", "grant", "{account}", "1e30"], "AMOUNT"),
        (["credits", "grant", "acct_missing", "5"], "No account acct_missing"),
        (["credits", "grant", "{account}", "5", "--reference", ""], "reference, when given, is 1 to 200"),
        (["credits", "grant", "{account}", "5", "--reference", "  "], "not blank"),  # an unset "$INVOICE"
        (["credits", "grant", "{account}", "5", "--reference", "r" * 201], "1 to 200 characters"),
        (["key", "create", "{account}", "--name", "n" * 101], "at most 100 characters"),
        (["key", "create", "{account}", "--name", "a\tb"], "without control characters"),
        (["key", "create", "acct_missing"], "No account acct_missing"),
        (["key", "create", "{account}", "--daily-cap", "-1"], "--daily-cap must be a positive"),
        (["key", "create", "{account}", "--daily-cap", "inf"], "--daily-cap"),
        (["key", "create", "{account}", "--daily-cap", "0.5000001"], "--daily-cap: 0.5000001 credits is finer"),
        (["key", "revoke", "key_missing"], "No API key key_missing"),
        (["usage", "acct_missing"], "No account acct_missing"),
        (["usage", "{account}", "--limit", "0"], "limit must be between"),
        (["credits", "grant", "{account}"], "the following arguments are required: amount"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_message_and_change_nothing(
    cli_db: Engine, run: Any, created: dict[str, Any], argv: list[str], message: str
) -> None:
    before = snapshot(cli_db)
    code, out, err = run(*[a.replace("{account}", created["account_id"]) for a in argv])
    assert code != 0
    assert message in err, err
    assert "Traceback" not in err
    assert out == ""
    assert snapshot(cli_db) == before


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HELYX_TIMEZONE", "Mars/Olympus", "HELYX_TIMEZONE: unknown time zone 'Mars/Olympus'"),
        ("HELYX_WEB_WORKERS", "two", "HELYX_WEB_WORKERS: Input should be a valid integer"),
        # values that parsed but could not work (an operator review found each accepted)
        ("HELYX_RATE_LIMIT_FREE", "-5", "HELYX_RATE_LIMIT_FREE: Input should be greater than or equal to 1"),
        ("HELYX_JOBS_RUNNING_FREE", "0", "HELYX_JOBS_RUNNING_FREE: Input should be greater than or equal to 1"),
        ("HELYX_JOB_LEASE_SECONDS", "-1", "HELYX_JOB_LEASE_SECONDS: Input should be greater than 0"),
        ("HELYX_SIGNED_URL_TTL_SECONDS", "-100", "HELYX_SIGNED_URL_TTL_SECONDS: Input should be greater than"),
        ("HELYX_DEFAULT_MAX_TOKENS", "100000", "HELYX_DEFAULT_MAX_TOKENS: Input should be less than or equal to 4096"),
        ("HELYX_PORT", "99999", "HELYX_PORT: Input should be less than or equal to 65535"),
        ("HELYX_PUBLIC_URL", "notaurl", "HELYX_PUBLIC_URL: 'notaurl' is not an absolute http(s) base URL"),
        ("HELYX_DATABASE_URL", "notaurl", "HELYX_DATABASE_URL: 'notaurl' is not a SQLite or PostgreSQL URL"),
        ("HELYX_DATABASE_URL", "mysql://u@h/db", "HELYX_DATABASE_URL: 'mysql://u@h/db' is not a SQLite"),
        ("HELYX_REDIS_URL", "http://foo", "HELYX_REDIS_URL: 'http://foo' is not a Redis URL"),
        ("HELYX_LOG_LEVEL", "LOUD", "HELYX_LOG_LEVEL: unknown log level 'LOUD'"),
        ("HELYX_SECRET_KEY", "x", "HELYX_SECRET_KEY: too short: at least 16 characters"),
        ("HELYX_ADMIN_TOKEN", "a", "HELYX_ADMIN_TOKEN: too short: at least 16 characters"),
        ("HELYX_CORS_ORIGINS", "[not json", "HELYX_CORS_ORIGINS: "),
    ],
)
def test_a_bad_setting_stops_every_command_with_one_line_naming_it(
    cli_db: Engine, run: Any, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    """Checked before anything runs: an unknown zone used to start a server whose every
    authenticated request then failed with a 500."""
    before = snapshot(cli_db)
    monkeypatch.setenv(variable, value)
    reset_settings_cache()
    for argv in (["account", "create", "x@example.com"], ["migrate"]):
        code, out, err = run(*argv)
        assert (code, out) == (2, "")
        assert err.startswith(f"helyx: error: invalid configuration: {message}"), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert snapshot(cli_db) == before


@pytest.mark.parametrize(("argv", "message"), [
    (["worker", "--processes", "0"], "argument --processes: must be 1 or more, not 0"),
    (["worker", "--threads", "-1"], "argument --threads: must be 1 or more, not -1"),
    (["serve", "--port", "99999"], "argument --port: must be a TCP port, 1-65535, not 99999"),
    (["serve", "--port", "x"], "argument --port: must be a whole number, not 'x'"),
    (["serve", "--workers", "0"], "argument --workers: must be 1 or more, not 0"),
    (["serve", "--host", " "], "argument --host: must be an address to bind"),
])
def test_bad_counts_and_ports_are_refused_before_anything_starts(argv: list[str], message: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_demo_is_refused_in_the_production_shape_and_creates_nothing(
    cli_db: Engine, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Pro account with a fresh key belongs to a local trial, not to the operator's database."""
    monkeypatch.setenv("HELYX_REDIS_URL", "redis://127.0.0.1:6379/15")
    reset_settings_cache()
    before = snapshot(cli_db)
    code, out, err = run("serve", "--demo", "--port", "1")
    assert (code, out) == (2, "")
    assert err.startswith("helyx: --demo is for the self-contained mode"), err
    assert snapshot(cli_db) == before


def test_an_unreachable_database_is_one_line_not_a_traceback(run: Any, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setenv("HELYX_DATABASE_URL", "postgresql://postgres@127.0.0.1:9/helyx")  # nothing listens
    monkeypatch.setenv("HELYX_STORAGE_DIR", str(tmp_path / "files"))
    monkeypatch.delenv("HELYX_REDIS_URL", raising=False)
    reset_settings_cache()
    # (serve: the self-contained mode's jobs lock is the first to need the database)
    for argv in (["migrate"], ["account", "create", "x@example.com"], ["usage", "acct_x"], ["serve", "--port", "1"]):
        code, out, err = run(*argv)
        assert (code, out) == (1, ""), argv
        assert err.startswith("helyx: error: cannot use the database: connection failed"), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_serve_with_a_broken_catalog_stops_before_printing_a_demo_key(
    cli_db: Engine, run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[providers.mine]\nkind = "nope"\n', "utf-8")
    monkeypatch.setenv("HELYX_CATALOG", str(catalog))
    reset_settings_cache()
    before = snapshot(cli_db)
    code, out, err = run("serve", "--demo", "--port", "1")
    assert (code, out) == (2, "")
    assert err.startswith("helyx: error: invalid catalog: provider mine: kind must be one of"), err
    assert "Traceback" not in err and snapshot(cli_db) == before


def test_a_misspelt_setting_stops_every_command_naming_the_setting_meant(
    cli_db: Engine, run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """HELYX_RATELIMIT_FREE was ignored without a word. A typo whose setting is unset stops the
    command; one whose setting is set anyway is a warning; names further away are left alone."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("HELYX_RATELIMIT_FREE=5\n", "utf-8")
    monkeypatch.setenv("HELYX_DATABSE_URL", "postgresql://postgres@127.0.0.1:5432/prod")  # HELYX_DATABASE_URL is set
    for other in ("HELYX_KEY", "HELYX_TEST_REDIS_URL", "HELYX_DB_PORT", "HELYX_BASE_URL", "HELYX_WORKERS"):
        monkeypatch.setenv(other, "1")  # a shell's, the tests', a Kubernetes service's: not typos
    before = snapshot(cli_db)
    code, out, err = run("account", "create", "typo@example.com")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "helyx: warning: HELYX_DATABSE_URL is not a setting (did you mean HELYX_DATABASE_URL?)",
        "helyx: error: invalid configuration: HELYX_RATELIMIT_FREE is not a setting (did you mean "
        "HELYX_RATE_LIMIT_FREE?)",
    ]
    assert snapshot(cli_db) == before
    (tmp_path / ".env").write_text("HELYX_RATE_LIMIT_FREE=5\n", "utf-8")
    code, _, err = run("account", "create", "typo@example.com")
    assert code == 0 and err.splitlines() == [
        "helyx: warning: HELYX_DATABSE_URL is not a setting (did you mean HELYX_DATABASE_URL?)"]


def test_serve_in_the_production_shape_on_a_taken_port_is_one_line_before_serving(
    cli_db: Engine, run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HELYX_REDIS_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.setenv("HELYX_STORAGE_DIR", str(tmp_path / "files"))
    reset_settings_cache()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run("serve", "--port", str(port))
    assert (code, out) == (1, "")
    assert err.strip() == f"helyx: cannot listen on 127.0.0.1:{port}: Address already in use", err


def test_a_storage_directory_that_is_a_file_is_named_as_such(
    cli_db: Engine, run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("not a directory", "utf-8")
    monkeypatch.setenv("HELYX_STORAGE_DIR", str(blocker))
    reset_settings_cache()
    code, out, err = run("serve", "--port", "1")
    assert (code, out) == (2, "")
    assert err.strip() == (f"helyx: error: cannot use the storage directory: HELYX_STORAGE_DIR {blocker}: "
                           "a file is in the way: not a directory"), err


def test_serve_demo_can_start_more_often_than_an_account_has_keys(cli_db: Engine) -> None:
    """Each start revokes the last demo key; the operator's paths count active keys only, so a
    crash loop of `helyx serve --demo` does not lock the demo out for a day (found by a diff review)."""
    from cli.run_commands import _demo_key

    for _ in range(accounts.MAX_ACTIVE_KEYS + 5):
        _demo_key("127.0.0.1", 8000)
    with cli_db.connect() as conn:
        active = conn.execute(text("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL")).scalar_one()
    assert active == 1


@pytest.mark.parametrize(("level", "number"), [("WARN", 30), ("INFO", 20), ("fatal", 50), ("NOTSET", 0)])
def test_serve_in_the_production_shape_hands_uvicorn_the_log_level_and_a_grace_rounded_up(
    cli_db: Engine, run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, level: str, number: int,
) -> None:
    """A log level logging takes but uvicorn's names lack (WARN) stopped the start with a KeyError;
    a grace of 0.5 s reached uvicorn as none (found by a diff review)."""
    import uvicorn

    given: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: given.update(kwargs, app=app))
    monkeypatch.setenv("HELYX_REDIS_URL", "redis://127.0.0.1:1/0")  # not answering: a warning, not a stop
    monkeypatch.setenv("HELYX_STORAGE_DIR", str(tmp_path / "files"))
    monkeypatch.setenv("HELYX_LOG_LEVEL", level)
    monkeypatch.setenv("HELYX_SHUTDOWN_GRACE_SECONDS", "0.5")
    reset_settings_cache()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = run("serve", "--port", str(port))
    assert code == 0, err
    assert given["app"] == "api.main:app" and given["port"] == port
    assert (given["log_level"], given["timeout_graceful_shutdown"], given["access_log"]) == (number, 1, False)
    assert "warning: Redis at redis://127.0.0.1:1/0 does not answer" in err


# ---------------------------------------------------------------- the schema


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


def test_account_create_makes_the_schema_of_a_new_database(run: Any, bare_db: Engine) -> None:
    made = ok_json(run("account", "create", "first@example.com"))
    assert made["api_key"].startswith("hx-") and {"accounts", "alembic_version"} <= _tables(bare_db)


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
