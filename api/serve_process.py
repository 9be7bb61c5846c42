"""The production shape's API process: what `helyx serve` replaces itself with (`os.execv`) once its
checks and the migration are done.

The serving process then holds only what the API needs. Serving from the CLI's own process, it also
held the CLI, Alembic and the start-up checks: 129 MB under load with one web process against 114
MB for the same app started on its own (bench/README, thirty-second round), against a target of
120 MB per process. With `--workers` above 1 this is uvicorn's supervisor, which never imports the
app, and its worker processes, which import this module as their main one (multiprocessing's
spawn; they imported the `helyx` script, and with it the CLI, before), so all of them are smaller.

Everything comes in argv (cli.run_commands builds it): the settings were read and checked there.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

APP = "api.main:app"
HTTP_PROTOCOL = "api.http_protocol:BoundedHeadProtocol"  # httptools, with the request head bounded


def command_line(*, host: str, port: int, workers: int, grace_seconds: int, log_level: str) -> list[str]:
    """The arguments `main` takes (after `python -P -m api.serve_process`)."""
    return ["--host", host, "--port", str(port), "--workers", str(workers), "--grace-seconds", str(grace_seconds),
            "--log-level", log_level]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -P -m api.serve_process", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--grace-seconds", type=int, required=True)
    p.add_argument("--log-level", required=True)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from common import logs

    args = _parse(argv)
    logs.configure(args.log_level)
    # uvicorn's own lines (its start and stop, a worker process that died and was replaced) in the
    # JSON logging set up above; no access log (the API logs each request). The level as a number:
    # uvicorn's names lack WARN, FATAL and NOTSET, which logging (and the setting) take.
    uvicorn.run(APP, host=args.host, port=args.port, workers=args.workers, http=HTTP_PROTOCOL,
                timeout_graceful_shutdown=args.grace_seconds, log_level=logging.getLevelName(args.log_level),
                access_log=False, log_config=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
