"""`helyx serve` (and its start-up checks) in-process: counts, ports, the demo, an unreachable
database or Redis, a broken catalog, misspelt settings, the log level handed to uvicorn."""

from __future__ import annotations

import importlib.metadata
import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from cli import single_instance
from cli.main import main
from common import accounts
from common.settings import get_settings, reset_settings_cache
from tests.cli.helpers import snapshot
from tests.integration.helpers_processes import free_port


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
    assert err.startswith("helyx: error: --demo is for the self-contained mode"), err
    assert snapshot(cli_db) == before


@pytest.mark.parametrize(("argv", "env", "named"), [
    (["serve", "--workers", "2", "--port", "1"], {}, "--workers 2"),
    (["serve", "--port", "1"], {"HELYX_WEB_WORKERS": "2"}, "HELYX_WEB_WORKERS 2"),
])
def test_more_than_one_process_is_refused_in_the_self_contained_mode_naming_what_asked_for_it(
        cli_db: Engine, run: Any, monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str],
        named: str) -> None:
    """It said only "the self-contained mode runs one process", whether a flag or a setting asked
    for more (an operator review)."""
    monkeypatch.delenv("HELYX_REDIS_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()
    before = snapshot(cli_db)
    code, out, err = run(*argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"helyx: error: {named}: the self-contained mode runs one process"), err
    assert snapshot(cli_db) == before


def test_version_names_the_installed_release(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"helyx {importlib.metadata.version('helyx')}\n"


def test_a_worker_without_redis_is_refused_in_one_line(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HELYX_REDIS_URL", raising=False)
    reset_settings_cache()
    code, out, err = run("worker")
    assert (code, out) == (2, "")
    assert err == "helyx: error: `helyx worker` needs HELYX_REDIS_URL; in the self-contained mode `helyx serve` " \
                  "runs the workers\n", err


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
        "helyx: warning: HELYX_DATABSE_URL is not a setting (did you mean HELYX_DATABASE_URL?)",
        f"helyx: the key is in the database at {cli_db.url.database}; it works against an API that uses that "
        "database"]


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
    assert err.strip() == f"helyx: error: cannot listen on 127.0.0.1:{port}: Address already in use", err


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
def test_serve_in_the_production_shape_becomes_the_api_process_with_the_log_level_and_a_grace_rounded_up(
    cli_db: Engine, run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, level: str, number: int,
) -> None:
    """`helyx serve` replaces itself with api.serve_process, which hands uvicorn the settings. A log
    level logging takes but uvicorn's names lack (WARN) stopped the start with a KeyError; a grace of
    0.5 s reached uvicorn as none (found by a diff review)."""
    import os
    import sys

    import uvicorn

    from api import serve_process
    from cli import run_commands

    lock_file = str(single_instance.lock_path(get_settings()))
    seen: dict[str, Any] = {}

    def exec_process(path: str, argv: list[str]) -> None:
        seen.update(path=path, argv=argv)
        try:  # at the exec, the database's lock is held shared: no self-contained serve beside it
            single_instance.claim_database(get_settings()).close()
        except single_instance.AlreadyServing:
            seen["lock_shared"] = True
        seen["lock_inherited"] = [fd for fd in map(int, os.listdir("/proc/self/fd"))
                                  if _path_of(fd) == lock_file and os.get_inheritable(fd)]

    monkeypatch.setattr(run_commands, "exec_process", exec_process)
    monkeypatch.setenv("HELYX_REDIS_URL", "redis://127.0.0.1:1/0")  # not answering: a warning, not a stop
    monkeypatch.setenv("HELYX_STORAGE_DIR", str(tmp_path / "files"))
    monkeypatch.setenv("HELYX_LOG_LEVEL", level)
    monkeypatch.setenv("HELYX_SHUTDOWN_GRACE_SECONDS", "0.5")
    reset_settings_cache()
    port = free_port()
    code, _, err = run("serve", "--port", str(port))
    assert code == 0, err
    assert "warning: Redis at redis://127.0.0.1:1/0 does not answer" in err
    assert seen["path"] == sys.executable and seen["argv"][:4] == [sys.executable, "-P", "-m", "api.serve_process"]
    assert seen["lock_shared"] and len(seen["lock_inherited"]) == 1  # the exec keeps it

    given: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: given.update(kwargs, app=app))
    assert serve_process.main(seen["argv"][4:]) == 0
    assert given["app"] == "api.main:app" and (given["host"], given["port"], given["workers"]) == ("127.0.0.1", port, 1)
    assert (given["log_level"], given["timeout_graceful_shutdown"], given["access_log"]) == (number, 1, False)
    assert given["http"] == "api.http_protocol:BoundedHeadProtocol"  # request heads bounded (api.http_protocol)
    assert given["log_config"] is None  # uvicorn's lines in the JSON logging (common.logs)


def test_an_exec_that_fails_is_one_line_and_leaves_the_lock_free(
    cli_db: Engine, run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """The venv's python replaced under a running deploy: it was a traceback (found by a review)."""
    import sys

    from cli import run_commands

    def exec_process(path: str, argv: list[str]) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(run_commands, "exec_process", exec_process)
    monkeypatch.setenv("HELYX_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("HELYX_STORAGE_DIR", str(tmp_path / "files"))
    reset_settings_cache()
    code, out, err = run("serve", "--port", str(free_port()))
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == (f"helyx: error: cannot start the API process ({sys.executable}): "
                                    "No such file or directory"), err
    single_instance.claim_database(get_settings()).close()  # the serve's shared lock went with the failure


def _path_of(fd: int) -> str:
    import os

    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def test_a_serve_starting_removes_only_the_metrics_files_of_processes_that_are_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It removed every file: a second serve on the same directory erased the live counters of
    the first one's processes, for good (their files were unlinked while open)."""
    import os
    import subprocess

    from cli.run_commands import _empty_metrics_dir

    gone = subprocess.Popen(["true"])
    gone.wait()
    live, dead = os.getpid(), gone.pid
    for name in (f"counter_{live}.db", f"gauge_livesum_{live}.db", f"counter_{dead}.db", f"histogram_{dead}.db",
                 "counter_x.db"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    _empty_metrics_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"counter_{live}.db", f"gauge_livesum_{live}.db"]


@pytest.mark.parametrize("multiproc_dir", [False, True])
def test_several_api_processes_without_a_metrics_directory_are_warned_of(
    cli_db: Engine, run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, multiproc_dir: bool,
    execs: list[list[str]],
) -> None:
    """Each scrape showed one process's request counters, and nothing said so at start."""
    monkeypatch.setenv("HELYX_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("HELYX_STORAGE_DIR", str(tmp_path / "files"))
    monkeypatch.setenv("HELYX_WEB_WORKERS", "2")
    if multiproc_dir:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    else:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    reset_settings_cache()
    port = free_port()
    code, _, err = run("serve", "--port", str(port))
    assert code == 0, err
    assert ("2 API processes without PROMETHEUS_MULTIPROC_DIR" in err) is not multiproc_dir, err
    assert execs[0][execs[0].index("--workers") + 1] == "2"  # uvicorn's supervisor, then, in api.serve_process


def test_the_demo_printout_names_the_accounts_plan_as_it_is(cli_db: Engine, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    """The README says the demo account is on the Pro plan: the printout says so too, and after
    `helyx plan set` it says the plan set (found by a new-user review: it named none)."""
    import json

    from cli.run_commands import _demo_key

    _demo_key("127.0.0.1", 8000)
    first = json.loads(capsys.readouterr().out.split("\n\nTry:")[0])
    with cli_db.begin() as conn:
        conn.execute(text("UPDATE accounts SET plan = 'ultra' WHERE id = :a"), {"a": first["account_id"]})
    _demo_key("127.0.0.1", 8000)
    second = json.loads(capsys.readouterr().out.split("\n\nTry:")[0])
    assert (first["plan"], second["plan"]) == ("pro", "ultra")
    assert set(first) == {"account_id", "plan", "api_key", "base_url"}
