"""Structured logs: one JSON object per line (python-json-logger), for every process.

Request lines come from api.observability; job transitions from workers.execute. A full `hx-`
key never reaches a log: authentication logs only the display prefix; prompts are never logged.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

_configured = False


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each record, not the stream it was at
    configuration (a test's captured stderr, closed once that test ends)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure(level: str = "INFO") -> None:
    """JSON lines on stderr for the root logger (idempotent)."""
    global _configured
    if _configured:
        return
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                       rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                                       json_ensure_ascii=False,
                                       reserved_attrs=[*RESERVED_ATTRS, "color_message"]))  # uvicorn's ANSI copy
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("alembic", "uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for own_format in ("uvicorn", "uvicorn.error"):  # uvicorn's lines (start-up, errors) as JSON too
        logger = logging.getLogger(own_format)
        logger.handlers[:] = []
        logger.propagate = True
    _configured = True
