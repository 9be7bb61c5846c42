"""Every line a process logs is one JSON object, uvicorn's own included (in a fresh process: the
logging set-up is once per process)."""

from __future__ import annotations

import json
import subprocess
import sys

_SCRIPT = """
import logging, sys
uvicorn_error = logging.getLogger("uvicorn.error")  # as uvicorn leaves it: its own handler, no propagation
uvicorn_error.addHandler(logging.StreamHandler(sys.stderr))
uvicorn_error.propagate = False
from common import logs
logs.configure("INFO")
uvicorn_error.info("Started server process [%d]", 42, extra={"color_message": "Started \\x1b[36m%d\\x1b[0m"})
logging.getLogger("helyx.request").info("request", extra={"status": 200})
"""


def test_uvicorns_lines_and_ours_are_json_objects() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("uvicorn.error", "Started server process [42]"), ("helyx.request", "request")]
    assert "color_message" not in lines[0] and lines[1]["status"] == 200


_CANCELLED = """
import asyncio, logging
from common import logs
logs.configure("INFO")
error = logging.getLogger("uvicorn.error")
error.error("Cancel %s running task(s), timeout graceful shutdown exceeded", 2)
for message in ("Task cancelled, timeout graceful shutdown exceeded", "cancelled by something else"):
    try:
        raise asyncio.CancelledError(message)
    except asyncio.CancelledError as exc:
        error.error("Exception in ASGI application\\n", exc_info=exc)
"""


def test_only_uvicorns_cut_at_the_end_of_the_grace_and_its_count_become_warnings() -> None:
    """Any other cancellation reaching uvicorn is a defect: it keeps its ERROR and its traceback."""
    done = subprocess.run([sys.executable, "-c", _CANCELLED], capture_output=True, text=True, timeout=60, check=True)
    count, cut, other = [json.loads(line) for line in done.stderr.splitlines()]
    assert (count["level"], count["message"]) == (
        "WARNING", "the shutdown grace is over: cutting off 2 request(s) still running")
    assert (cut["level"], "exc_info" in cut) == ("WARNING", False)
    assert cut["message"].startswith("a request still running at the end of the shutdown grace was cut off")
    assert (other["level"], other["message"]) == ("ERROR", "Exception in ASGI application\n")
    assert "cancelled by something else" in other["exc_info"]
