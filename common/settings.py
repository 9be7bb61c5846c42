"""The one settings object. Nothing else in Helyx reads the environment.

Every field is read from `HELYX_<NAME>` (or a `.env` file). Provider API keys are named by the
catalog (for example `OPENAI_API_KEY`), so `provider_secret()` is the single, deliberate place
where an environment variable outside the `HELYX_` prefix is read.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HELYX_", env_file=".env", extra="ignore")

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
    cors_origins: list[str] = []
    max_body_bytes: int = 4 * 1024 * 1024
    max_messages: int = 256
    max_message_chars: int = 200_000

    # Serving
    host: str = "127.0.0.1"
    public_url: str | None = Field(default=None, description="Absolute base URL for links in webhooks")
    port: int = 8000
    web_workers: int = 1
    shutdown_grace_seconds: float = 30.0
    opentelemetry: bool = Field(
        default=False, description="FastAPI's native OpenTelemetry (spans, metrics) through the global providers"
    )

    # Simulation (the offline provider)
    simulate: Literal["auto", "1", "0"] = "auto"
    simulated_job_seconds: float = 0.3
    simulated_chat_delay: float = 0.0

    # Billing
    hold_ttl_seconds: int = Field(default=900, ge=1)  # a running call renews its hold every third of it
    hold_sweep_interval_seconds: float = 30.0
    default_max_tokens: int = 2048

    # Rate limits: requests per minute per key, by plan
    rate_limit_free: int = 20
    rate_limit_plus: int = 60
    rate_limit_pro: int = 120
    rate_limit_ultra: int = 300

    # Upstream calls
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 120.0
    upstream_retries: int = 2
    upstream_backoff_seconds: float = 0.25

    # Media jobs
    image_wait_seconds: float = 60.0
    image_job_time_limit: float = 300.0
    video_job_time_limit: float = 1200.0
    job_max_retries: int = 3
    job_retry_backoff_ms: int = 1000
    job_lease_seconds: float = 20.0
    sweep_interval_seconds: float = 5.0
    stale_queued_seconds: float = 30.0
    results_ttl_days: int = 7
    signed_url_ttl_seconds: int = 3600
    worker_processes: int = 2
    worker_threads: int = 8
    # The longest wait of an idle Dramatiq consumer between polls of Redis; a send wakes idle
    # consumers at once (workers.wakeable_broker), so this bounds only delayed retries and missed
    # wake-ups (Dramatiq's default is 1,000 ms).
    worker_poll_ms: int = 50
    jobs_running_free: int = 1
    jobs_running_plus: int = 2
    jobs_running_pro: int = 4
    jobs_running_ultra: int = 8

    # Webhooks
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 10.0
    webhook_max_attempts: int = 5
    webhook_backoff_seconds: float = 1.0

    # Logs
    log_level: str = "INFO"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        """Checked at start-up: an unknown zone otherwise failed every authenticated request."""
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
        """The provider key named by the catalog, or None when unset or empty."""
        if not env_name:
            return None
        value = os.environ.get(env_name, "").strip()
        return value or None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    """For tests and the CLI: re-read the environment on next access."""
    get_settings.cache_clear()
