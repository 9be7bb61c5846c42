"""`helyx`: the command line (SPEC §5).

    helyx serve [--demo] [--host H] [--port P] [--workers N]   the API (self-contained without HELYX_REDIS_URL)
    helyx worker [--processes N] [--threads N]     Dramatiq workers for the media queues
    helyx migrate                                  bring the database schema up to date
    helyx --version                                the installed release
    helyx account create EMAIL [--plan PLAN]       prints {"account_id", "api_key", ...} (plan: free)
    helyx key create ACCOUNT_ID [--name N] [--daily-cap CREDITS]   prints the new key
    helyx key revoke KEY_ID
    helyx credits grant ACCOUNT_ID AMOUNT [--reference R]
    helyx plan set ACCOUNT_ID PLAN
    helyx usage ACCOUNT_ID [--limit N] [--after CURSOR]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import signal
import sys
from collections.abc import Sequence

import psycopg
from pydantic import ValidationError
from sqlalchemy.exc import DatabaseError, OperationalError

from cli import admin_commands, run_commands
from cli.preflight import StorageUnusable
from common.catalog import CatalogError
from common.db import DatabaseUnusable
from common.errors import HelyxError
from common.migrate import SchemaNewerThanRelease
from common.plans import PLANS
from common.reports import MAX_PAGE
from common.settings import Settings, misspelt_names


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None


def _count(text: str) -> int:
    """A number of processes or threads: 1 or more."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _cursor(text: str) -> int:
    """A ledger entry id (`next_cursor`): a BIGINT, so SQLite can bind it (a larger one was an OverflowError)."""
    value = _integer(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be a next_cursor the previous page printed, not {value}")
    return value


def _limit(text: str) -> int:
    """A page size, as `GET /usage` takes it (common.reports): refused here, naming the flag."""
    value = _integer(text)
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_PAGE}, not {value}")
    return value


def _host(text: str) -> str:
    """A bind address: not blank (HELYX_HOST refuses one too; `--host ''` bound 127.0.0.1 silently)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be an address to bind, such as 127.0.0.1 or 0.0.0.0, not blank")
    return text.strip()


def _port(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1-65535, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helyx", description="Helyx: an OpenAI-compatible AI API gateway.")
    parser.add_argument("--version", action="version", version=f"helyx {importlib.metadata.version('helyx')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the API (and, self-contained, the workers)")
    serve.add_argument("--host", type=_host, help="bind address (default HELYX_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port (default HELYX_PORT or 8000)")
    serve.add_argument("--workers", type=_count, help="uvicorn worker processes (production shape only)")
    serve.add_argument("--demo", action="store_true", help="create a demo account and print a fresh key")
    serve.set_defaults(func=run_commands.serve)

    worker = sub.add_parser("worker", help="run the Dramatiq workers for media jobs")
    worker.add_argument("--processes", type=_count, help="worker processes (default HELYX_WORKER_PROCESSES)")
    worker.add_argument("--threads", type=_count, help="threads per process (default HELYX_WORKER_THREADS)")
    worker.set_defaults(func=run_commands.worker)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(func=run_commands.migrate)

    account = sub.add_parser("account", help="manage accounts").add_subparsers(dest="action", required=True)
    create = account.add_parser("create", help="create an account and its first key")
    create.add_argument("email")
    create.add_argument("--plan", choices=PLANS, default="free")
    create.set_defaults(func=admin_commands.account_create)

    key = sub.add_parser("key", help="manage API keys").add_subparsers(dest="action", required=True)
    key_create = key.add_parser("create", help="create a key for an account")
    key_create.add_argument("account_id")
    key_create.add_argument("--name", default="")
    key_create.add_argument("--daily-cap", help="daily credit cap for this key (credits, up to 6 decimals)")
    key_create.set_defaults(func=admin_commands.key_create)
    key_revoke = key.add_parser("revoke", help="revoke a key")
    key_revoke.add_argument("key_id")
    key_revoke.set_defaults(func=admin_commands.key_revoke)

    credits = sub.add_parser("credits", help="manage credits").add_subparsers(dest="action", required=True)
    grant = credits.add_parser("grant", help="grant top-up credits")
    grant.add_argument("account_id")
    grant.add_argument("amount", help="credits, up to 6 decimals")
    grant.add_argument("--reference", help="idempotency reference: a repeated grant is a no-op")
    grant.set_defaults(func=admin_commands.credits_grant)

    plan = sub.add_parser("plan", help="manage plans").add_subparsers(dest="action", required=True)
    plan_set = plan.add_parser("set", help="change an account's plan now")
    plan_set.add_argument("account_id")
    plan_set.add_argument("plan", choices=PLANS)
    plan_set.set_defaults(func=admin_commands.plan_set)

    usage = sub.add_parser("usage", help="show an account's credits and recent ledger")
    usage.add_argument("account_id")
    usage.add_argument("--limit", type=_limit, default=20, help="entries per page, 1-500 (default 20)")
    usage.add_argument("--after", type=_cursor, default=None, help="the next_cursor the previous page printed")
    usage.set_defaults(func=admin_commands.usage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        misspelt = misspelt_names()
    except UnicodeDecodeError:  # (Settings reads it as well: the first reader says so)
        print("helyx: error: invalid configuration: .env is not UTF-8 text (saved as UTF-16 by an editor?)",
              file=sys.stderr)
        return 2
    for name, meant, lost in misspelt:
        severity = "error: invalid configuration" if lost else "warning"
        print(f"helyx: {severity}: {name} is not a setting (did you mean {meant}?)", file=sys.stderr)
    if any(lost for _, _, lost in misspelt):  # the setting meant is unset: the typo's value would be lost
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that left (`| head`) is met here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _reader_left()
    except HelyxError as exc:
        print(f"helyx: error: {exc.message}", file=sys.stderr)
        return 2
    except CatalogError as exc:
        print(f"helyx: error: invalid catalog: {exc}", file=sys.stderr)
        return 2
    except StorageUnusable as exc:
        print(f"helyx: error: cannot use the storage directory: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # the settings (HELYX_* variables, .env)
        if exc.title != Settings.__name__:
            raise
        lines: dict[str, None] = {}  # in order, each once: two bad items of one list are one line
        for error in exc.errors():
            # a list's item index is no part of the variable's name (HELYX_CORS_ORIGINS, not ..._0)
            name = "HELYX_" + "_".join(str(part) for part in error["loc"] if not isinstance(part, int)).upper()
            lines[f"helyx: error: invalid configuration: {name}: {error['msg'].removeprefix('Value error, ')}"] = None
        print("\n".join(lines), file=sys.stderr)
        return 2
    except SchemaNewerThanRelease as exc:  # serve, worker, migrate on a database a newer release migrated
        print(f"helyx: error: {exc}", file=sys.stderr)
        return 1
    except (DatabaseError, psycopg.OperationalError, DatabaseUnusable) as exc:
        # not there, refuses us, or (SQLite's plain DatabaseError) a file that is not a database
        if isinstance(exc, DatabaseError) and not (isinstance(exc, OperationalError) or type(exc) is DatabaseError):
            raise  # an IntegrityError or the like is a fault of ours: its traceback is wanted
        cause = exc.orig if isinstance(exc, DatabaseError) else exc  # (psycopg's own: the serve's jobs lock)
        reason = str(cause).strip().splitlines()[0] if cause else type(exc).__name__
        print(f"helyx: error: cannot use the database: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _reader_left() -> int:
    """The output's reader closed it (`helyx usage ... | head`): stop quietly, as a command killed
    by SIGPIPE does (status 141), with nothing more written to the closed pipe at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
