"""Settings that take more than one form, and values the defaults must keep accepting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from api.schemas.chat import MAX_CONTENT_CHARS, MAX_MESSAGES
from common.settings import DAY_SECONDS, JOB_HARD_LIMIT_SECONDS, Settings


@pytest.mark.parametrize(("raw", "origins"), [
    ('["https://a.example", "https://b.example"]', ["https://a.example", "https://b.example"]),
    ("https://a.example, https://b.example", ["https://a.example", "https://b.example"]),
    ("https://a.example", ["https://a.example"]),
    ("", []),
])
def test_cors_origins_are_a_json_list_or_comma_separated(monkeypatch: pytest.MonkeyPatch, raw: str,
                                                         origins: list[str]) -> None:
    monkeypatch.setenv("HELYX_CORS_ORIGINS", raw)
    assert Settings(_env_file=None).cors_origins == origins  # type: ignore[call-arg]


@pytest.mark.parametrize("raw", ["notanorigin", "https://a.example/", "https://a.example/app", "a.example:443",
                                 "ftp://a.example", "https://a.example, example.org"])
def test_a_cors_origin_a_browser_would_never_send_stops_the_start(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """It never matched, and CORS failed without a word."""
    monkeypatch.setenv("HELYX_CORS_ORIGINS", raw)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "is not an origin" in str(refused.value)
    monkeypatch.setenv("HELYX_CORS_ORIGINS", "http://localhost:3000, https://app.example.com:8443, *")
    assert Settings(_env_file=None).cors_origins == [  # type: ignore[call-arg]
        "http://localhost:3000", "https://app.example.com:8443", "*"]


def test_the_documented_urls_and_levels_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"HELYX_DATABASE_URL": "postgres://postgres@127.0.0.1:5432/helyx",
                        "HELYX_REDIS_URL": "rediss://cache.internal:6380/0",
                        "HELYX_PUBLIC_URL": "https://api.example.com/", "HELYX_LOG_LEVEL": "warning"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.log_level, settings.public_url) == ("WARNING", "https://api.example.com/")
    assert Settings(_env_file=None, database_url="sqlite:///helyx-data/helyx.db").is_sqlite  # type: ignore[call-arg]
    for alias in ("warn", "fatal", "notset"):  # what the logging module takes, as before the check
        assert Settings(_env_file=None, log_level=alias).log_level == alias.upper()  # type: ignore[call-arg]


def test_provider_keys_are_read_from_the_same_env_file_as_the_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("HELYX_TIMEZONE=UTC\nOPENAI_API_KEY=sk-from-dotenv\nEMPTY_KEY=\n", "utf-8")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert (settings.timezone, settings.provider_secret("OPENAI_API_KEY")) == ("UTC", "sk-from-dotenv")
    assert settings.provider_secret("EMPTY_KEY") is None and settings.provider_secret("NOT_THERE") is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")  # the environment wins, as for HELYX_*
    assert settings.provider_secret("OPENAI_API_KEY") == "sk-from-the-environment"
    for blank in ("", "  "):  # set empty in the environment, it wins too: the provider has no key
        monkeypatch.setenv("OPENAI_API_KEY", blank)
        assert settings.provider_secret("OPENAI_API_KEY") is None
    assert Settings(_env_file=None).provider_secret("ANTHROPIC_API_KEY_NOT_SET") is None  # type: ignore[call-arg]


@pytest.mark.parametrize(("name", "ceiling"), [("HELYX_MAX_MESSAGES", MAX_MESSAGES),
                                               ("HELYX_MAX_MESSAGE_CHARS", MAX_CONTENT_CHARS)])
def test_the_input_limits_can_be_lowered_and_raising_them_is_refused(
        monkeypatch: pytest.MonkeyPatch, name: str, ceiling: int) -> None:
    """The request schema refuses more than its ceiling before a setting is read: a higher setting
    would have been silently ignored."""
    field = name.removeprefix("HELYX_").lower()
    monkeypatch.setenv(name, str(ceiling // 2))
    assert getattr(Settings(_env_file=None), field) == ceiling // 2  # type: ignore[call-arg]
    monkeypatch.setenv(name, str(ceiling))
    assert getattr(Settings(_env_file=None), field) == ceiling  # type: ignore[call-arg]
    monkeypatch.setenv(name, str(ceiling + 1))
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", ["HELYX_IMAGE_JOB_TIME_LIMIT", "HELYX_VIDEO_JOB_TIME_LIMIT"])
def test_a_job_time_limit_must_leave_room_under_the_actors_hard_limit(monkeypatch: pytest.MonkeyPatch,
                                                                      name: str) -> None:
    """Dramatiq interrupting a job at its hard limit left it `running`, to be run (and paid for) again."""
    from workers.actors import run_image_job, run_video_job  # here: importing them sets up the broker

    assert run_image_job.options["time_limit"] == run_video_job.options["time_limit"] == JOB_HARD_LIMIT_SECONDS * 1000
    monkeypatch.setenv(name, str(JOB_HARD_LIMIT_SECONDS - 600))
    Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv(name, str(JOB_HARD_LIMIT_SECONDS - 599))
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]


_DURATIONS = [name for name, info in Settings.model_fields.items()
              if info.annotation is float and any(getattr(m, "le", None) == DAY_SECONDS for m in info.metadata)]


def test_every_duration_setting_is_bounded_by_a_day() -> None:
    assert {"job_lease_seconds", "shutdown_grace_seconds", "upstream_read_timeout", "image_wait_seconds"} <= set(
        _DURATIONS)
    for name, info in Settings.model_fields.items():  # the job time limits have lower bounds of their own
        if info.annotation is float:
            assert any(getattr(m, "le", DAY_SECONDS + 1) <= DAY_SECONDS for m in info.metadata), name


@pytest.mark.parametrize("name", _DURATIONS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e20", str(DAY_SECONDS + 1)])
def test_a_duration_that_is_infinite_or_past_a_day_stops_the_start(monkeypatch: pytest.MonkeyPatch, name: str,
                                                                   value: str) -> None:
    """An infinite lease never reclaimed a dead worker's jobs; a grace of 1e20 s overflowed at shutdown."""
    monkeypatch.setenv(f"HELYX_{name.upper()}", value)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert refused.value.errors()[0]["loc"] == (name,)
    monkeypatch.setenv(f"HELYX_{name.upper()}", str(DAY_SECONDS))
    assert getattr(Settings(_env_file=None), name) == DAY_SECONDS  # type: ignore[call-arg]


@pytest.mark.parametrize(("name", "longest"), [
    ("hold_ttl_seconds", DAY_SECONDS), ("job_retry_backoff_ms", DAY_SECONDS * 1000),
    ("worker_poll_ms", DAY_SECONDS * 1000), ("signed_url_ttl_seconds", 7 * DAY_SECONDS), ("results_ttl_days", 3_650),
])
def test_a_whole_number_duration_past_its_longest_stops_the_start(monkeypatch: pytest.MonkeyPatch, name: str,
                                                                  longest: int) -> None:
    """A signed URL's expiry of 1e14 s was accepted and signed."""
    monkeypatch.setenv(f"HELYX_{name.upper()}", str(longest + 1))
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert refused.value.errors()[0]["loc"] == (name,)
    monkeypatch.setenv(f"HELYX_{name.upper()}", str(longest))
    assert getattr(Settings(_env_file=None), name) == longest  # type: ignore[call-arg]


@pytest.mark.parametrize(("name", "value"), [("HELYX_HOST", ""), ("HELYX_HOST", "  "), ("HELYX_STORAGE_DIR", " ")])
def test_an_empty_host_or_storage_directory_stops_the_start(monkeypatch: pytest.MonkeyPatch, name: str,
                                                            value: str) -> None:
    """An empty host listened on every interface (one of spaces failed at the bind); an empty
    directory was the working one."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("HELYX_HOST", " 127.0.0.1 ")
    monkeypatch.delenv("HELYX_STORAGE_DIR", raising=False)
    assert Settings(_env_file=None).host == "127.0.0.1"  # type: ignore[call-arg]


@pytest.mark.parametrize("url", ["postgresql+asyncpg://u@h/db", "postgresql+psycopg2://u@h/db",
                                 "postgresql+pg8000://u@h/db", "sqlite+aiosqlite:///x.db"])
def test_a_database_url_naming_another_driver_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Each passed the check, then every command died on the driver's import (a traceback)."""
    monkeypatch.setenv("HELYX_DATABASE_URL", url)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "names the driver" in refused.value.errors()[0]["msg"]
    for fine in ("postgres://u@h/db", "postgresql://u@h/db", "postgresql+psycopg://u@h/db", "sqlite:///x.db"):
        monkeypatch.setenv("HELYX_DATABASE_URL", fine)
        assert Settings(_env_file=None).database_url == fine  # type: ignore[call-arg]


def test_an_empty_catalog_setting_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELYX_CATALOG", "")
    assert Settings(_env_file=None).catalog is None  # type: ignore[call-arg]


@pytest.mark.parametrize(("name", "value"), [
    ("HELYX_DATABASE_URL", "mysql://root:TopSecretPW@127.0.0.1/x"),
    ("HELYX_REDIS_URL", "http://:TopSecretPW@cache:6379/0"),
    ("HELYX_PUBLIC_URL", "ftp://ops:TopSecretPW@files.example.com"),
    ("HELYX_DATABASE_URL", "postgresq://app:TopSecretPW/cd+ef@db:5432/helyx"),  # a / in it: urlsplit saw none
    ("HELYX_REDIS_URL", "rediss//:TopSecretPW#x?@cache:6379"),  # the scheme's colon missing
])
def test_a_refused_url_is_shown_without_its_password(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """The refusal lands in service and CI logs (found by a security review)."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    message = refused.value.errors()[0]["msg"]
    assert "TopSecretPW" not in message and ":***@" in message, message


@pytest.mark.parametrize(("field", "value"), [
    ("admin_token", "hunter2-secret"),  # too short (16 needed)
    ("secret_key", "hunter2-secret"),
    ("database_url", "postgresql://helyx:hunter2-secret@db/helyx?x=%zz"),
    ("database_url", "mysql://helyx:hunter2-secret@db/helyx"),
    ("redis_url", "redis://:hunter2-secret@redis:99999/0"),
])
def test_a_refused_setting_never_echoes_its_secret(field: str, value: str) -> None:
    """The whole error, as `uvicorn api.main:app` and `dramatiq workers.actors` print it at start-up:
    pydantic added `input_value='...'` to it, the raw token or URL (found by a security review)."""
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, **{field: value})  # type: ignore[arg-type, call-arg]
    assert "hunter2-secret" not in str(refused.value)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&cache=shared&uri=true",
                                 "sqlite:///file::memory:?uri=true"])
def test_an_in_memory_sqlite_database_stops_the_start(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """`helyx account create` printed a key of a database gone with the process; `helyx serve` ran
    with a sweeper failing on every pass (each connection saw an empty database of its own)."""
    monkeypatch.setenv("HELYX_DATABASE_URL", url)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "in-memory SQLite database" in str(refused.value)


def test_the_hosts_own_zone_is_refused_for_the_billing_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """`localtime` is a file in the zone directory that follows each host's /etc/localtime."""
    monkeypatch.setenv("HELYX_TIMEZONE", "localtime")
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "each host's own zone" in str(refused.value)


def test_a_password_in_a_urls_query_is_masked_too() -> None:
    """libpq takes `?password=`; a refusal or a start-up line printed it (a diff review)."""
    from common.settings import shown_url

    shown = shown_url("postgresql://app@db/helyx?sslmode=require&password=TopSecretPW&x=1")
    assert shown == "postgresql://app@db/helyx?sslmode=require&password=***&x=1"
    assert shown_url("postgresql://app:TopSecretPW@db/helyx?PASSWORD=TopSecretPW") == \
        "postgresql://app:***@db/helyx?PASSWORD=***"
    assert shown_url("postgresql://db/helyx?sslpassword=TopSecretPW") == "postgresql://db/helyx?sslpassword=***"


@pytest.mark.parametrize(("raw", "said"), [
    ("redis://127.0.0.1:6379/4x", "is not a number"),  # redis-py used database 0 without a word
    ("redis://127.0.0.1:6379/abc", "is not a number"),
    ("redis://127.0.0.1:6379/\u00b2", "is not a number"),  # a digit to isdigit(), not to redis-py's int()
    ("redis://127.0.0.1:notaport/4", "Port could not be cast"),  # a traceback at the first connection
    ("redis://127.0.0.1:6379/4?socket_timeout=abc", "socket_timeout"),
])
def test_a_redis_url_redis_py_cannot_read_as_written_stops_the_start(monkeypatch: pytest.MonkeyPatch, raw: str,
                                                                     said: str) -> None:
    monkeypatch.setenv("HELYX_REDIS_URL", raw)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert said in str(refused.value)


@pytest.mark.parametrize("raw", ["redis://127.0.0.1:6379", "redis://127.0.0.1:6379/", "redis://h:6379/15",
                                 "rediss://u:pw@h:6380/2", "unix:///run/redis.sock?db=3"])
def test_the_redis_urls_redis_py_reads_are_accepted(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("HELYX_REDIS_URL", raw)
    assert Settings(_env_file=None).redis_url == raw  # type: ignore[call-arg]


@pytest.mark.parametrize(("query", "said"), [("sslmod=require", "sslmod"), ("connect_timeout=abc", "connect_timeout")])
def test_a_postgresql_url_libpq_refuses_stops_the_start(monkeypatch: pytest.MonkeyPatch, query: str, said: str) -> None:
    """It was a traceback of a hundred lines at the first connection, from every command."""
    monkeypatch.setenv("HELYX_DATABASE_URL", f"postgresql://postgres@127.0.0.1:5432/helyx?{query}")
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert said in str(refused.value)
