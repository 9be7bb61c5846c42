"""`helyx worker` execs our supervisor over Dramatiq's CLI, with our sizes, grace and idle-poll pause."""

from __future__ import annotations

import os
from typing import Any

import pytest

from common.settings import Settings
from workers import runner


def test_helyx_worker_execs_the_supervisor_over_dramatiqs_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6379/15", worker_poll_ms=30, worker_processes=3,
                        worker_threads=5, shutdown_grace_seconds=7, log_level="WARNING")
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(runner, "get_settings", lambda: settings)
    monkeypatch.setattr(runner, "upgrade", lambda engine: None)
    monkeypatch.setattr(runner, "get_engine", lambda url: object())
    monkeypatch.setattr(runner.os, "execv", lambda path, argv: calls.append((path, argv)))
    monkeypatch.setenv("dramatiq_worker_timeout", "unset")  # restored to absent after the test

    runner.run()

    (path, argv), = calls
    separator = argv.index("--")
    assert argv[1:separator] == ["-m", "workers.supervisor", "--log-level", "WARNING"]
    dramatiq = argv[separator + 1:]
    assert dramatiq[1:5] == ["-m", "dramatiq", "workers.actors", "workers.boot"] and path == dramatiq[0]
    assert dramatiq[dramatiq.index("--processes") + 1] == "3" and dramatiq[dramatiq.index("--threads") + 1] == "5"
    assert dramatiq[dramatiq.index("--worker-shutdown-timeout") + 1] == "7000"
    assert os.environ["dramatiq_worker_timeout"] == "30"  # noqa: SIM112 - Dramatiq's own lowercase name


def test_a_poll_interval_above_a_second_acts_as_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """No idle consumer waits longer (workers.wakeable_broker), and Dramatiq's idle worker threads
    wait this long for a message, which a graceful stop would wait out."""
    settings = Settings(redis_url="redis://127.0.0.1:6379/15", worker_poll_ms=60_000)
    monkeypatch.setattr(runner, "get_settings", lambda: settings)
    monkeypatch.setattr(runner, "upgrade", lambda engine: None)
    monkeypatch.setattr(runner, "get_engine", lambda url: object())
    monkeypatch.setattr(runner.os, "execv", lambda path, argv: None)
    monkeypatch.setenv("dramatiq_worker_timeout", "unset")

    runner.run()

    assert os.environ["dramatiq_worker_timeout"] == "1000"  # noqa: SIM112


def test_without_redis_the_worker_explains_and_stops(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[Any]) -> None:
    monkeypatch.setattr(runner, "get_settings", lambda: Settings(redis_url=None))
    assert runner.run() == 2
    assert "HELYX_REDIS_URL" in capsys.readouterr().err
