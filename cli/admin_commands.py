"""The operator commands: accounts, keys, credits, plans, usage. Each prints JSON."""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from common import accounts, billing, clock, ledger, reports
from common.db import get_engine, normalize_url
from common.errors import InvalidRequest
from common.migrate import SchemaNewerThanRelease, current_revision, head_revision, is_current, is_known, upgrade
from common.money import PLAIN_DECIMAL, to_credits, to_micro
from common.settings import get_settings, shown_url


def _engine(*, create: bool = False) -> Engine:
    """The database, its schema current. These commands never migrate an existing database: run
    with a newer release they would start its migrations (one rewrites the ledger under a lock)
    whenever an operator looked something up; `helyx migrate` does that, and serve and worker as
    they start. A database without the schema gets it only for `create` (`account create`: a new
    deployment's first account); any other command refuses it, so that a mistyped
    HELYX_DATABASE_URL gains no tables."""
    url = make_url(normalize_url(get_settings().database_url))
    if not create and url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        raise InvalidRequest(f"There is no database file at {url.database}: is HELYX_DATABASE_URL the right one?")
    engine = get_engine(get_settings().database_url)
    revision = current_revision(engine)
    if revision is None and create:
        upgrade(engine)
        # on stderr, the JSON on stdout staying whole: from another directory, the default SQLite path is
        # another file than the one `helyx serve` uses, and its key would be refused there
        print(f"helyx: made a new Helyx database at {_shown_database()} (HELYX_DATABASE_URL, relative to the working "
              "directory for SQLite)", file=sys.stderr)
    elif revision is None:
        raise InvalidRequest("This database has no Helyx schema: is HELYX_DATABASE_URL the right one? "
                             "(`helyx migrate`, or `helyx account create`, makes it.)")
    elif not is_known(revision):
        raise SchemaNewerThanRelease(revision)  # exit 1, as serve, worker and migrate
    elif not is_current(engine):
        raise InvalidRequest(f"This database's schema is at revision {revision}, not this release's "
                             f"{head_revision()}: run `helyx migrate` (serve and worker do as they start).")
    return engine


def _shown_database() -> str:
    """The database these commands use, as an operator can check it: a SQLite file's absolute
    path, a server's URL as HELYX_DATABASE_URL has it (not the driver's form Helyx connects with)
    without its password (in the user part or the query)."""
    configured = get_settings().database_url
    url = make_url(normalize_url(configured))
    if url.get_backend_name() == "sqlite":
        return str(Path(url.database or "").resolve())
    return shown_url(configured)


def _say_where_the_key_works() -> None:
    """On stderr (stdout is the JSON): a key works only against an API on this database, and a
    shell without the deployment's settings (HELYX_DATABASE_URL, or its .env) writes to the
    default SQLite file, whose keys the production API refuses as unknown."""
    print(f"helyx: the key is in the database at {_shown_database()}; it works against an API that uses that "
          "database", file=sys.stderr)


def _print(payload: Any) -> None:
    print(json.dumps(payload, indent=2))


def account_create(args: argparse.Namespace) -> int:
    engine, tz = _engine(create=True), get_settings().timezone
    with engine.begin() as conn:
        account_id, key = accounts.create_account(conn, args.email, args.plan, day=billing.today(tz),
                                                  now=clock.now().timestamp())
    _print({"account_id": account_id, "api_key": key.secret, "key_id": key.id, "plan": args.plan})
    _say_where_the_key_works()
    return 0


def key_create(args: argparse.Namespace) -> int:
    cap = _micro(args.daily_cap, "--daily-cap") if args.daily_cap is not None else None
    with _engine().begin() as conn:
        key = accounts.create_key(conn, args.account_id, name=args.name, now=clock.now().timestamp(), daily_cap=cap)
    _print({"key_id": key.id, "api_key": key.secret, "account_id": args.account_id, "name": key.name,
            "daily_credit_cap": to_credits(cap) if cap is not None else None})
    _say_where_the_key_works()
    return 0


def key_revoke(args: argparse.Namespace) -> int:
    with _engine().begin() as conn:
        accounts.revoke_key(conn, args.key_id, now=clock.now().timestamp())
    _print({"key_id": args.key_id, "revoked": True})
    return 0


def credits_grant(args: argparse.Namespace) -> int:
    engine = _engine()
    with engine.begin() as conn:
        applied = ledger.grant(conn, args.account_id, _micro(args.amount, "AMOUNT"), now=clock.now().timestamp(),
                               reference=args.reference)
    _print({**reports.credits_summary(engine, args.account_id, get_settings().timezone), "granted": applied})
    return 0


def plan_set(args: argparse.Namespace) -> int:
    engine, tz = _engine(), get_settings().timezone
    with engine.begin() as conn:
        ledger.change_plan(conn, args.account_id, args.plan, billing.today(tz), now=clock.now().timestamp())
    _print(reports.credits_summary(engine, args.account_id, tz))
    return 0


def usage(args: argparse.Namespace) -> int:
    engine, tz = _engine(), get_settings().timezone
    _print({"credits": reports.credits_summary(engine, args.account_id, tz),
            "ledger": reports.list_usage(engine, args.account_id, limit=args.limit, after=args.after)})
    return 0


MAX_CREDITS = 10**9  # as in the admin API: larger amounts overflow the BIGINT micro-credit columns


def _micro(text: str, name: str) -> int:
    """Credits as typed, read exactly (a Decimal): never rounded to fit, as a float would be. Plain
    decimal notation only: Decimal also reads `1_0000` (10,000: a typo granted) and `1e3`."""
    try:
        if not PLAIN_DECIMAL.fullmatch(text.strip()):
            raise InvalidOperation
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidRequest(f"{name} must be a number of credits in plain decimal notation (such as 2500 or "
                             f"0.25), not {text!r}.", param=name) from None
    if not amount.is_finite() or amount <= 0:
        raise InvalidRequest(f"{name} must be a positive number of credits.", param=name)
    if amount > MAX_CREDITS:
        raise InvalidRequest(f"{name} must be at most {MAX_CREDITS:,} credits.", param=name)
    try:
        return to_micro(amount)
    except ValueError as exc:  # finer than one micro-credit
        raise InvalidRequest(f"{name}: {exc} (at most 6 decimals).", param=name) from None
