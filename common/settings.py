"""The one settings object. Nothing else in Helyx reads the environment.

Every field is read from `HELYX_<NAME>` (or a `.env` file). Provider API keys are named by the
catalog (for example `OPENAI_API_KEY`), so `provider_secret()` is the single, deliberate place
where a variable outside the `HELYX_` prefix is read (from the environment or the same `.env`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values
from pydantic import Field, PrivateAttr, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_CHARS = 16
DAY_SECONDS = 86_400  # the longest a duration setting may be (but these two): past it, a typo (1e20 overflowed time_t)
MAX_SIGNED_URL_TTL_SECONDS = 7 * DAY_SECONDS  # a week, as S3's presigned URLs
MAX_RESULTS_TTL_DAYS = 3_650
JOB_HARD_LIMIT_SECONDS = 2 * 3600  # Dramatiq's time limit on the job actors (workers/actors.py)


class Settings(BaseSettings):
    # allow_inf_nan: an infinite lease or timeout would be a job never reclaimed, a call never ended
    model_config = SettingsConfigDict(env_prefix="HELYX_", env_file=".env", extra="ignore", allow_inf_nan=False,
                                      hide_input_in_errors=True)  # a refused value may be a secret: never echoed
    _dotenv: dict[str, str] = PrivateAttr(default_factory=dict)  # the .env file's lines (provider keys)

    # Storage of truth and files
    database_url: str = "sqlite:///helyx-data/helyx.db"
    redis_url: str | None = None
    storage_dir: Path = Path("helyx-data/files")
    catalog: Path | None = None
    timezone: str = "Asia/Karachi"

    # Security
    admin_token: SecretStr | None = None
    secret_key: SecretStr | None = Field(
        default=None, description="Signs file URLs; generated into the storage dir when unset."
    )
    cors_origins: Annotated[list[str], NoDecode] = []  # a JSON list or comma-separated origins
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Lower only: the request schema (api/schemas/chat.py) refuses more than these before any setting is read.
    max_messages: int = Field(default=256, ge=1, le=256)
    max_message_chars: int = Field(default=200_000, ge=1, le=200_000)

    # Serving
    host: str = Field(default="127.0.0.1", min_length=1)  # empty: uvicorn listened on every interface
    public_url: str | None = Field(default=None, description="Absolute base URL for links in webhooks")
    port: int = Field(default=8000, ge=1, le=65535)
    web_workers: int = Field(default=1, ge=1)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, le=DAY_SECONDS)
    opentelemetry: bool = Field(
        default=False, description="FastAPI's native OpenTelemetry (spans, metrics) through the global providers"
    )

    # Simulation (the offline provider)
    simulate: Literal["auto", "1", "0"] = "auto"
    simulated_job_seconds: float = Field(default=0.3, ge=0, le=DAY_SECONDS)
    simulated_chat_delay: float = Field(default=0.0, ge=0, le=DAY_SECONDS)

    # Billing
    hold_ttl_seconds: int = Field(default=900, ge=1, le=DAY_SECONDS)  # a running call renews its hold every third of it
    hold_sweep_interval_seconds: float = Field(default=30.0, gt=0, le=DAY_SECONDS)
    default_max_tokens: int = Field(default=2048, ge=1, le=4096)  # SPEC §4: max_tokens 1-4096

    # Rate limits: requests per minute per key, by plan
    rate_limit_free: int = Field(default=20, ge=1)
    rate_limit_plus: int = Field(default=60, ge=1)
    rate_limit_pro: int = Field(default=120, ge=1)
    rate_limit_ultra: int = Field(default=300, ge=1)

    # Upstream calls
    upstream_connect_timeout: float = Field(default=5.0, gt=0, le=DAY_SECONDS)
    upstream_read_timeout: float = Field(default=120.0, gt=0, le=DAY_SECONDS)
    upstream_retries: int = Field(default=2, ge=0, le=10)
    upstream_backoff_seconds: float = Field(default=0.25, ge=0, le=DAY_SECONDS)

    # Media jobs
    image_wait_seconds: float = Field(default=60.0, ge=0, le=DAY_SECONDS)
    # Below the actors' hard limit, with time to spare for storing and settling: a job Dramatiq
    # cuts off stays `running` and runs again (a paid call) once its lease lapses.
    image_job_time_limit: float = Field(default=300.0, gt=0, le=JOB_HARD_LIMIT_SECONDS - 600)
    video_job_time_limit: float = Field(default=1200.0, gt=0, le=JOB_HARD_LIMIT_SECONDS - 600)
    job_max_retries: int = Field(default=3, ge=0, le=20)
    job_retry_backoff_ms: int = Field(default=1000, ge=0, le=DAY_SECONDS * 1000)
    job_lease_seconds: float = Field(default=20.0, gt=0, le=DAY_SECONDS)
    sweep_interval_seconds: float = Field(default=5.0, gt=0, le=DAY_SECONDS)
    stale_queued_seconds: float = Field(default=30.0, gt=0, le=DAY_SECONDS)
    results_ttl_days: int = Field(default=7, ge=1, le=MAX_RESULTS_TTL_DAYS)
    signed_url_ttl_seconds: int = Field(default=3600, ge=1, le=MAX_SIGNED_URL_TTL_SECONDS)
    worker_processes: int = Field(default=2, ge=1)
    worker_threads: int = Field(default=8, ge=1)
    # The longest wait of an idle Dramatiq consumer between polls of Redis; a message reaching its
    # queue wakes it at once (workers.wakeable_broker), so this bounds only how soon a delayed
    # message come due is moved to its queue (Dramatiq's default is 1,000 ms).
    worker_poll_ms: int = Field(default=50, ge=1, le=DAY_SECONDS * 1000)
    jobs_running_free: int = Field(default=1, ge=1)  # 0 would queue the plan's jobs for ever
    jobs_running_plus: int = Field(default=2, ge=1)
    jobs_running_pro: int = Field(default=4, ge=1)
    jobs_running_ultra: int = Field(default=8, ge=1)

    # Webhooks
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=DAY_SECONDS)
    webhook_max_attempts: int = Field(default=5, ge=1)
    webhook_backoff_seconds: float = Field(default=1.0, ge=0, le=DAY_SECONDS)

    # Logs
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        from common.db import normalize_url

        try:
            url = make_url(normalize_url(value))
            backend = url.get_backend_name()
        except ArgumentError:
            url, backend = None, ""
        except ValueError:  # (SQLAlchemy's int() of the port, whose message named no setting's terms)
            raise ValueError(f"{shown_url(value)!r}: {_unparsed_authority(value)} "
                             "(postgresql://user@host:5432/db)") from None
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"{shown_url(value)!r} is not a SQLite or PostgreSQL URL (sqlite:///path/helyx.db, "
                             "postgresql://user@host:5432/db)")
        if url is not None and url.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
            # another driver (asyncpg, psycopg2, aiosqlite) is not installed: every command died on its import
            raise ValueError(f"{shown_url(value)!r} names the driver {url.get_driver_name()!r}; Helyx uses its own "
                             "(write sqlite:///... or postgresql://...)")
        in_memory = backend == "sqlite" and (url is None or ":memory:" in (url.database or ":memory:")
                                             or "mode=memory" in value)
        if in_memory:  # each connection (and each process) would see a database of its own
            raise ValueError(f"{shown_url(value)!r} is an in-memory SQLite database, gone with the process and not "
                             "shared by its threads; give a file (sqlite:///path/helyx.db)")
        if backend == "postgresql":
            import psycopg
            from psycopg.conninfo import conninfo_to_dict, timeout_from_conninfo

            from common.db import libpq_conninfo

            try:  # libpq's own parse, offline: an unknown option (`?sslmod=`) was a traceback at the first connect
                timeout_from_conninfo(conninfo_to_dict(libpq_conninfo(value)))  # (psycopg reads connect_timeout)
            except psycopg.ProgrammingError as exc:
                raise ValueError(f"{shown_url(value)!r}: {str(exc).strip()}") from None
        return value

    @field_validator("storage_dir", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        """An empty value was the working directory (the URL-signing key written there)."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty: a directory for the result files")
        return value

    @field_validator("host", mode="before")
    @classmethod
    def _a_host(cls, value: object) -> object:
        """Spaces around a host are dropped (as `--host` has it); spaces alone are no host."""
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise ValueError("must not be empty: the address to listen on (127.0.0.1, or 0.0.0.0 for every one)")
        return value

    @field_validator("catalog", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        """Empty means unset, as for the other optional settings (it was the directory `.`)."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{shown_url(value)!r} is not a Redis URL (redis://host:6379/0)")
        if value:
            from redis.connection import parse_url

            try:  # what redis-py (and Dramatiq's broker) will make of it: a bad port or option raised deep inside
                parse_url(value)
            except ValueError as exc:
                raise ValueError(f"{shown_url(value)!r}: {exc}") from None
            path = urlsplit(value).path.strip("/")
            if value.startswith(("redis://", "rediss://")) and path and not (path.isascii() and path.isdigit()):
                # redis-py ignores a database number it cannot read and uses database 0 (another deployment's?)
                raise ValueError(f"{shown_url(value)!r}: the database number {path!r} is not a number "
                                 "(redis://host:6379/0)")
        return value or None

    @field_validator("public_url")
    @classmethod
    def _public(cls, value: str | None) -> str | None:
        """The base of the links put in webhooks and job objects: an absolute http(s) URL."""
        if not value:
            return None
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment:
            raise ValueError(f"{shown_url(value)!r} is not an absolute http(s) base URL (https://api.example.com)")
        return value

    @field_validator("admin_token", "secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        """They guard the admin API (which grants credits) and the file URL signatures."""
        if value is not None and 0 < len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(f"too short: at least {MIN_SECRET_CHARS} characters (openssl rand -hex 32)")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [o.strip() for o in text.split(",") if o.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _each_an_origin(cls, origins: list[str]) -> list[str]:
        """A browser sends `scheme://host[:port]` and nothing else: any other value (a path, a
        trailing slash, a bare host) never matches, and CORS would fail without a word."""
        for origin in origins:
            parsed = urlsplit(origin)
            if origin != "*" and (parsed.scheme not in ("http", "https") or not parsed.hostname
                                  or origin != f"{parsed.scheme}://{parsed.netloc}"):
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port] (https://app.example.com) or *")
        return origins

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in logging.getLevelNamesMapping():  # WARN, FATAL and NOTSET too, as logging takes them
            raise ValueError(f"unknown log level {value!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        """Checked at start-up: an unknown zone otherwise failed every authenticated request."""
        if value.lower() in ("localtime", "posixrules"):  # files in the zone directory, not zones: each host's own
            raise ValueError(f"{value!r} is each host's own zone (the API's and the workers' could differ on the "
                             "billing day): use an IANA name such as Asia/Karachi or UTC")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}: use an IANA name such as Asia/Karachi or UTC") from None
        return value

    @property
    def self_contained(self) -> bool:
        """No Redis means one process does everything: SQLite, in-process broker, simulation."""
        return not self.redis_url

    @property
    def simulation_on(self) -> bool:
        if self.simulate == "auto":
            return self.self_contained
        return self.simulate == "1"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def rate_limit_for(self, plan: str) -> int:
        return int(getattr(self, f"rate_limit_{plan}"))

    def running_jobs_for(self, plan: str) -> int:
        return int(getattr(self, f"jobs_running_{plan}"))

    def provider_secret(self, env_name: str | None) -> str | None:
        """The provider key named by the catalog, or None when unset or empty: from the
        environment, else from the same `.env` file the HELYX_ settings were read from. Set in the
        environment, even empty, it wins, as a HELYX_ setting does: `OPENAI_API_KEY= helyx serve`
        simulates (or takes offline) a provider whose key `.env` holds."""
        if not env_name:
            return None
        value = os.environ[env_name] if env_name in os.environ else self._dotenv.get(env_name, "")
        return value.strip() or None

    def __init__(self, **values: Any) -> None:
        env_file = values.get("_env_file", self.model_config.get("env_file"))
        super().__init__(**values)
        if isinstance(env_file, str | Path) and Path(env_file).is_file():
            self._dotenv = {k: v for k, v in dotenv_values(env_file).items() if v is not None}


def shown_url(url: str) -> str:
    """A URL for an error message: whatever stands between `//user:` and the last `@` masked, and
    a `password=` in its query (libpq takes one there) (a refusal lands in service and CI logs).
    By pattern, not by parsing: a refused URL may be malformed, and a generated password may hold
    `/`, `#` or `?`, which end urlsplit's netloc."""
    return _QUERY_PASSWORD.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


def _unparsed_authority(url: str) -> str:
    """What SQLAlchemy's failed int() of a URL's port most likely means (by pattern, as shown_url)."""
    rest = url.split("//", 1)[-1]
    userinfo, _, host = rest.rpartition("@")
    if "@" in userinfo:  # SQLAlchemy ends the password at the first @: the rest became host and port
        return "an @ in its user name or password must be written %40"
    if host.startswith("[") and "]" not in host.split("/", 1)[0]:
        return "its IPv6 host has no closing ]"
    return "its port is not a number"


_PASSWORD = re.compile(r"^(.*?//[^:/@]*:).*@")
_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)[^&#]*", re.IGNORECASE)


def misspelt_names(env_file: str | Path = ".env") -> list[tuple[str, str, bool]]:
    """HELYX_ variables (in the environment or `.env`) that are no setting but one or two letters
    away from one, each with the setting meant and whether that setting is unset (then the typo
    surely lost a value: HELYX_DATABSE_URL ran on the default SQLite file). Other HELYX_ names (a
    shell's HELYX_KEY, the tests' HELYX_TEST_REDIS_URL, a Kubernetes service's HELYX_DB_PORT) are
    further away and left alone."""
    known = {f"HELYX_{name.upper()}" for name in Settings.model_fields}
    given = dict(os.environ)
    if Path(env_file).is_file():
        given = {**{k: v or "" for k, v in dotenv_values(env_file).items()}, **given}
    found = []
    for name in sorted(n for n in given if n.upper().startswith("HELYX_") and n.upper() not in known):
        meant = min(known, key=lambda k: _edit_distance(name.upper(), k))
        if _edit_distance(name.upper(), meant) <= 2:
            found.append((name, meant, not any(n.upper() == meant for n in given)))
    return found


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein: insertions, deletions and substitutions of one character."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    """For tests and the CLI: re-read the environment on next access."""
    get_settings.cache_clear()
