"""A warning of one cause goes out at most once per interval (a provider or Redis outage fails every
request alike), and the next line says how many were held back."""

from __future__ import annotations

import logging
import time

import pytest

from common.throttled_log import ThrottledWarnings


def test_a_warning_of_one_cause_is_logged_once_per_interval_with_the_count_of_those_held_back(
        caplog: pytest.LogCaptureFixture) -> None:
    warnings = ThrottledWarnings(logging.getLogger("helyx.test"), every_seconds=0.2)
    with caplog.at_level(logging.WARNING, logger="helyx.test"):
        for _ in range(5):
            warnings.warning("a", "provider %s failed", "a")
        warnings.warning("b", "provider %s failed", "b")  # another cause: at once
        time.sleep(0.25)
        warnings.warning("a", "provider %s failed", "a")
    assert [r.getMessage() for r in caplog.records] == [
        "provider a failed", "provider b failed", "provider a failed (4 more like it since the last such line)"]
