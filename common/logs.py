"""Structured logs: one JSON object per line (python-json-logger), for every process.

Request lines come from api.observability; job transitions from workers.execute. A full `hx-`
key never reaches a log: authentication logs only the display prefix; prompts are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

_configured = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of each record, not the stream it was at
    configuration (a test's captured stderr, closed once that test ends)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


class _CutAtShutdown(logging.Filter):
    """uvicorn cancels the requests still running when its shutdown grace ends, saying so at ERROR
    ("Cancel N running task(s), timeout graceful shutdown exceeded"), then logs each cancellation
    as "Exception in ASGI application" with a traceback, at ERROR too. It is the planned end of a
    graceful stop (each request's own line says what was produced and charged), so the count
    becomes a warning and each cut one warning without the traceback: a deploy that cuts a long
    stream pages nobody."""

    _COUNT = "Cancel %s running task(s), timeout graceful shutdown exceeded"  # uvicorn's own words

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # only uvicorn's own cut (it names it in the cancellation): any other stays an error
        if isinstance(exc, asyncio.CancelledError) and "graceful shutdown" in str(exc):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "a request still running at the end of the shutdown grace was cut off", ()
            record.exc_info, record.exc_text = None, None
        elif record.msg == self._COUNT:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "the shutdown grace is over: cutting off %s request(s) still running"
        return True


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
    logging.getLogger("uvicorn.error").addFilter(_CutAtShutdown())
    _configured = True
