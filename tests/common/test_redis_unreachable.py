"""Redis configured but not answering: the rate limit answers 503 and says why in the log (once per
ten seconds, not once per request), and a start names the problem on stderr (cli.preflight)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cli import preflight
from common.errors import ServiceUnavailable
from common.ratelimit import RateLimiter
from common.settings import Settings

CLOSED = "redis://:s3cret@127.0.0.1:1/0"  # nothing listens on port 1


def settings(redis_url: str | None) -> Settings:
    return Settings(_env_file=None, redis_url=redis_url)  # type: ignore[call-arg]


def test_a_redis_that_does_not_answer_is_a_503_whose_cause_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter(settings(CLOSED))

    async def two_requests() -> None:
        for _ in range(2):
            with pytest.raises(ServiceUnavailable):
                await limiter.hit("key_1", "free")

    with caplog.at_level(logging.WARNING, logger="helyx.api"):
        asyncio.run(two_requests())
    lines = [r.getMessage() for r in caplog.records if "rate limiting failed" in r.getMessage()]
    assert len(lines) == 1 and "ConnectionError" in lines[0], lines


def test_a_start_warns_of_a_redis_that_does_not_answer_with_its_password_masked() -> None:
    warning = preflight.redis_warning(settings(CLOSED))
    assert warning is not None and "does not answer" in warning and "s3cret" not in warning
    assert "redis://:***@127.0.0.1:1/0" in warning
    assert preflight.redis_warning(settings(None)) is None


@pytest.mark.redis
def test_no_warning_when_redis_answers(redis_url: str) -> None:
    assert preflight.redis_warning(settings(redis_url)) is None
