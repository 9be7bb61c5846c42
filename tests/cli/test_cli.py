"""`helyx` operator commands in-process (SPEC §5): each prints JSON; bad input exits non-zero with a
clear message on stderr and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from common import accounts, keys
from common.db import dispose_engines
from common.errors import AuthenticationFailed
from common.settings import reset_settings_cache
from tests.cli.helpers import ok_json, snapshot
from tests.conftest import TEST_TZ

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
        (["usage", "{account}", "--limit", "0"], "--limit: must be 1 to 500"),
        (["usage", "{account}", "--after", "99999999999999999999"], "--after: must be a next_cursor"),  # overflowed
        (["usage", "{account}", "--after", "-1"], "--after: must be a next_cursor"),
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
        ("HELYX_CORS_ORIGINS", "[1]", "HELYX_CORS_ORIGINS: "),  # an item's index made it HELYX_CORS_ORIGINS_0
        ("HELYX_CORS_ORIGINS", "[1,2]", "HELYX_CORS_ORIGINS: "),  # one line, not one per item (an operator review)
        ("HELYX_DATABASE_URL", "postgresql://u:pw@127.0.0.1:notaport/x",
         "HELYX_DATABASE_URL: 'postgresql://u:***@127.0.0.1:notaport/x': its port is not a number"),
        ("HELYX_DATABASE_URL", "postgresql://u:p@ss:w@127.0.0.1:5432/x",  # a generated password's @ (a review)
         "HELYX_DATABASE_URL: 'postgresql://u:***@127.0.0.1:5432/x': an @ in its user name or password must be "
         "written %40"),
        ("HELYX_DATABASE_URL", "postgresql://u@[::1/x", "HELYX_DATABASE_URL: 'postgresql://u@[::1/x': its IPv6 host"
         " has no closing ]"),
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


def test_a_dotenv_that_is_not_utf8_is_one_line(run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env saved as UTF-16 (Windows Notepad) made every command die in a UnicodeDecodeError."""
    (tmp_path / ".env").write_text("HELYX_LOG_LEVEL=INFO\n", "utf-16")
    monkeypatch.chdir(tmp_path)
    code, out, err = run("usage", "acct_x")
    assert (code, out) == (2, "") and err == ("helyx: error: invalid configuration: .env is not UTF-8 text (saved as "
                                              "UTF-16 by an editor?)\n")


def test_a_reader_that_leaves_early_stops_the_command_quietly(tmp_path: Path) -> None:
    """`helyx usage ... | head`: the pipe's reader gone, the command ends as one killed by SIGPIPE
    would (141), without a traceback; what it did is done."""
    env = {**os.environ, "HELYX_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "HELYX_TIMEZONE": TEST_TZ}
    env.pop("HELYX_REDIS_URL", None)
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "cli.main", "account", "create", "pipe@example.com"],
                              stdout=write_end, stderr=subprocess.PIPE, env=env, cwd=tmp_path, timeout=60,
                              check=False)
    finally:
        os.close(write_end)
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr.decode()
    assert done.returncode == 141
    engine = create_engine(env["HELYX_DATABASE_URL"])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT email FROM accounts")).scalars().all() == ["pipe@example.com"]
    engine.dispose()
