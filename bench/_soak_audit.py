"""bench/soak.py's audit: once the load has stopped, every account's money checked to the micro-credit."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._procs import ROOT
from bench._soak_memory import descendants
from tests.integration.helpers_processes import Processes

if TYPE_CHECKING:
    from bench._soak_load import Stats

def wait_settled(db_url: str, timeout: float) -> tuple[int, int]:
    """Until no job is unfinished and no hold is open; returns (unfinished jobs, open holds)."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            jobs = conn.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
            holds = conn.execute("SELECT COUNT(*) FROM holds WHERE status = 'open'").fetchone()[0]
            if (jobs == 0 and holds == 0) or time.monotonic() > deadline:
                return jobs, holds
            time.sleep(0.5)


_PER_ACCOUNT = """
SELECT a.id, a.plan, a.allowance, a.topup, a.held,
  (SELECT COALESCE(SUM(amount), 0) FROM ledger_entries l WHERE l.account_id = a.id),
  (SELECT COALESCE(SUM(held_delta), 0) FROM ledger_entries l WHERE l.account_id = a.id),
  (SELECT COALESCE(-SUM(amount), 0) FROM ledger_entries l WHERE l.account_id = a.id AND kind = 'settle'),
  (SELECT COALESCE(SUM(credits), 0) FROM generations g WHERE g.account_id = a.id),
  (SELECT COALESCE(SUM(charged), 0) FROM jobs j WHERE j.account_id = a.id),
  (SELECT COUNT(*) FROM holds h WHERE h.account_id = a.id AND h.status = 'open'),
  (SELECT COUNT(*) FROM generations g WHERE g.account_id = a.id),
  (SELECT COUNT(*) FROM jobs j WHERE j.account_id = a.id)
FROM accounts a ORDER BY a.email
"""
_RECORD_CHECKS = {
    "generations whose credits differ from their hold's charge":
        "SELECT g.id FROM generations g LEFT JOIN holds h ON h.purpose = 'chat:' || g.id"
        " WHERE h.id IS NULL OR h.status <> 'settled' AND g.credits <> 0 OR COALESCE(h.charged, 0) <> g.credits",
    "chat holds without a generation row":
        "SELECT h.id FROM holds h WHERE h.purpose LIKE 'chat:%%'"
        " AND NOT EXISTS (SELECT 1 FROM generations g WHERE 'chat:' || g.id = h.purpose)",
    "jobs whose charged differs from their hold's charge":
        "SELECT j.id FROM jobs j JOIN holds h ON h.id = j.hold_id WHERE COALESCE(h.charged, 0) <> j.charged",
    "jobs charged other than price (succeeded) or 0 (otherwise)":
        "SELECT id FROM jobs WHERE charged <> CASE WHEN status = 'succeeded' THEN price ELSE 0 END",
    "job holds without a job": "SELECT h.id FROM holds h WHERE h.purpose LIKE 'job:%%'"
        " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.hold_id = h.id)",
    "expired holds (a hold nobody resolved)": "SELECT id FROM holds WHERE status = 'expired'",
    "unfinished jobs": "SELECT id FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'canceled')",
    "failed jobs": "SELECT id || ' ' || COALESCE(error_code, '') FROM jobs WHERE status = 'failed'",
}


def diagnose_open_holds(db_url: str, procs: Processes, workdir: Path) -> None:
    """Holds still open after the wait: list them, and dump the API processes' Python stacks
    (py-spy, when installed) next to the logs, to see whether a request is stuck or gone."""
    import shutil
    import subprocess

    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT id, purpose, amount, created_at FROM holds WHERE status = 'open'").fetchall()
    for hold_id, purpose, amount, created in rows:
        print(f"  open hold {hold_id} {purpose} {amount / 1e6:g} credits, {time.time() - created:.0f} s old")
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not os.path.exists(spy):
        return
    for proc in procs.started:
        if proc.name == "api":
            for pid, _ in descendants(proc.popen.pid):
                out = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
                (workdir / f"py-spy-{pid}.txt").write_text(out.stdout + out.stderr)
    print(f"  py-spy dumps of the API processes in {workdir}")


class Audit:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, ok: bool, what: str, evidence: Any = "") -> None:
        print(f"  [{'PASS' if ok else 'FAIL'}] {what}" + ("" if ok or evidence == "" else f": {evidence}"))
        if not ok:
            self.failures.append(what)


def audit_database(db_url: str, stats: Stats, audit: Audit) -> dict[str, Any]:
    import psycopg

    facts: dict[str, Any] = {}
    with psycopg.connect(db_url) as conn:
        rows = [(r[0], r[1], *map(int, r[2:])) for r in conn.execute(_PER_ACCOUNT).fetchall()]
        bad_balance = [r[0] for r in rows if r[2] + r[3] != r[5]]
        bad_held = [r[0] for r in rows if r[4] != 0 or r[6] != 0 or r[10] != 0]
        bad_money = [(r[0], r[7], r[8] + r[9]) for r in rows if r[7] != r[8] + r[9]]
        audit.check(not bad_balance, f"balance == sum of ledger entries, all {len(rows)} accounts", bad_balance)
        audit.check(not bad_held, "held == 0, sum of held deltas == 0, no open hold, every account", bad_held)
        audit.check(not bad_money, "settled charges == generations.credits + jobs.charged, every account",
                    bad_money)
        for what, sql in _RECORD_CHECKS.items():
            found = [r[0] for r in conn.execute(sql.replace("%%", "%")).fetchall()]
            audit.check(not found, f"no {what}", f"{len(found)}: {found[:5]}")
        shown = stats.charges
        credits = dict(conn.execute("SELECT id, credits FROM generations WHERE id = ANY(%s)",
                                    [list(shown)]).fetchall())
        wrong = [(g, str(c), credits.get(g)) for g, c in shown.items() if credits.get(g) != int(c * 1_000_000)]
        audit.check(not wrong, f"credits_charged shown to the client == generations.credits ({len(shown)} answers)",
                    wrong[:5])
        cut = dict(conn.execute("SELECT id, status FROM generations WHERE id = ANY(%s)",
                                [stats.cut_ids]).fetchall())
        missing = [g for g in stats.cut_ids if g not in cut]
        audit.check(not missing, f"every cut stream has its generation row ({len(stats.cut_ids)} cut)", missing[:5])
        facts["cut_status"] = Counter(cut.values())
        rows_status = dict(conn.execute("SELECT id, status FROM jobs WHERE id = ANY(%s)",
                                        [list(stats.jobs)]).fetchall())
        differ = [(j.id, j.final, rows_status.get(j.id)) for j in stats.jobs.values()
                  if j.final != rows_status.get(j.id)]
        audit.check(not differ, "the status a poller saw last == the job row's status", differ[:5])
        facts["accounts"] = rows
        facts["ledger_kinds"] = dict(conn.execute(
            "SELECT kind, COUNT(*) FROM ledger_entries GROUP BY kind ORDER BY kind").fetchall())
        facts["generation_status"] = dict(conn.execute(
            "SELECT status, COUNT(*) FROM generations GROUP BY status ORDER BY status").fetchall())
        facts["job_status"] = conn.execute(
            "SELECT type, status, COUNT(*) FROM jobs GROUP BY type, status ORDER BY type, status").fetchall()
        facts["job_times"] = conn.execute(
            "SELECT type, started_at - created_at, finished_at - started_at, finished_at - created_at"
            " FROM jobs WHERE status = 'succeeded'").fetchall()
        facts["job_span"] = conn.execute(
            "SELECT COUNT(*), MIN(created_at), MAX(finished_at) FROM jobs WHERE status = 'succeeded'").fetchone()
        facts["attempts"] = dict(conn.execute("SELECT attempts, COUNT(*) FROM jobs GROUP BY attempts").fetchall())
    return facts


