"""The direct reference for bench/ledger.py: PostgreSQL's own C client, pgbench, running the very
statements Helyx runs (common.ledger_pg's reserve and resolve, autocommit, prepared), with no
Python in the way. What it reaches is the server's ceiling for these statements on this machine.

pgbench variables are numbers only, so the script maps each parameter to an SQL expression: the
account comes from a small table of the bench accounts, ids and references are built from a random
number, amounts and times are literals.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import make_url

from common import ledger_pg

HOLD = "('pgb' || (:h)::text)"


def available() -> bool:
    return shutil.which("pgbench") is not None


def _script(amount: int, charge: int) -> str:
    now = "extract(epoch from clock_timestamp())"
    reserve = {
        "aid": "(SELECT id FROM bench_accounts WHERE n = (:k)::int)", "kid": "NULL::text", "amt": str(amount),
        "hid": HOLD, "purpose": "'bench'", "now": now, "expires": f"({now} + 900)", "ref": f"('reserve:' || {HOLD})",
    }
    resolve = {
        "hid": HOLD, "status": "'settled'", "kind": "'settle'", "charge": str(charge), "now": now,
        "ref": f"('resolve:' || {HOLD})", "desc": "'bench'",
    }
    return "\n".join([
        r"\set h random(1, 1000000000000000)",
        _fill(ledger_pg._RESERVE, reserve) + ";",
        _fill(ledger_pg._RESOLVE_SQL[False, False], resolve) + ";",
    ]) + "\n"


def _fill(sql: str, values: dict[str, str]) -> str:
    return re.sub(r"%\((\w+)\)s", lambda m: values[m.group(1)], sql)


def run(
    url: str, account_ids: list[str], clients: int, seconds: float, amount: int, charge: int,
) -> tuple[float, float]:
    """(pairs/s, mean latency ms) for `clients` pgbench clients on the given accounts."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_accounts (n int PRIMARY KEY, id text)"))
        conn.execute(text("TRUNCATE bench_accounts"))
        for n, account_id in enumerate(account_ids, 1):
            conn.execute(text("INSERT INTO bench_accounts VALUES (:n, :id)"), {"n": n, "id": account_id})
    engine.dispose()
    parsed = make_url(url)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "pair.sql"
        script.write_text(f"\\set k random(1, {len(account_ids)})\n" + _script(amount, charge))
        out = subprocess.run(
            ["pgbench", "-n", "-M", "prepared", "-f", str(script), "-c", str(clients), "-j", str(min(clients, 2)),
             "-T", str(max(1, round(seconds))), "-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432),
             "-U", parsed.username or "postgres", parsed.database or "postgres"],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        ).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))  # type: ignore[union-attr]
    return tps, latency
