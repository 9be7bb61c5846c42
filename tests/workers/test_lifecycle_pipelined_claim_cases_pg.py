"""The pipelined claim on PostgreSQL (common.jobs.lifecycle_pg.claim, its rules in SQL:
transition_sql.CLAIM_PIPELINED, its wait for a slot included) against the general path
(common.jobs.lifecycle.claim, the reference), case by case: for every job state, hold, attempts
limit and running cap, it either does exactly what the general path does (the same outcome, the
same writes) or writes nothing and leaves the decision to the general path. Each case is built
twice, in two accounts, under a frozen clock: one claimed through lifecycle.claim (the pipelined
path first), one through the general path alone."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from common import accounts, clock, ledger, pg_statements
from common.jobs import lifecycle, lifecycle_pg
from common.jobs.submit import submit_job
from common.jobs.transition_sql import PIPELINED
from common.money import MICRO
from common.plans import PLANS
from tests.conftest import TEST_TZ, create_test_account

pytestmark = pytest.mark.postgres
PRICE = 3 * MICRO
CAP = 2
# The job claimed: its status, and its attempts so far.
STATES = {
    "queued, first run": {"status": "queued", "attempts": 0},
    "queued, a retry": {"status": "queued", "attempts": 1},
    "running, its lease lapsed": {"status": "running", "attempts": 1, "lease_owner": "dead", "lease_until": -10},
    "running, its lease live": {"status": "running", "attempts": 1, "lease_owner": "alive", "lease_until": 10},
    "succeeded": {"status": "succeeded", "attempts": 1, "finished_at": -5},
    "canceled": {"status": "canceled", "attempts": 0, "finished_at": -5},
}
HOLDS = ["open", "expired", "released", "no hold row"]
# max_attempts: none, one more than the job's attempts (below), or its attempts (used up).
LIMITS = ["none", "below", "at"]
# (the plan's running cap, jobs running under a live lease, an older job waiting for a slot)
SCENARIOS = {
    "uncapped, an older job waiting": (None, 1, True),
    "capped, a slot free, an older job waiting": (CAP, CAP - 1, True),
    "capped, a slot free, none waiting": (CAP, CAP - 1, False),
    "capped, no slot free, an older job waiting": (CAP, CAP, True),
    "capped, no slot free, none waiting": (CAP, CAP, False),
}


def _submit(engine: Engine, secret: str) -> str:
    principal = accounts.authenticate(engine, secret, now=clock.now().timestamp())
    return submit_job(engine, principal, job_type="image", model="nano-banana-pro", price=PRICE, tz=TEST_TZ,
                      params={"prompt": "case", "n": 1, "width": 256, "height": 256}).job_id


def _set(engine: Engine, job_id: str, **columns: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE jobs SET {', '.join(f'{c} = :{c}' for c in columns)} WHERE id = :id"),
                     {**columns, "id": job_id})


def _build(engine: Engine, now: float, state: str, hold: str, running: int, waiting: bool) -> dict[str, str]:
    """An account with `running` jobs under a live lease, an older job waiting for a slot if
    `waiting` (its first run, sent again), and the job to claim: each job's id -> its role."""
    account = create_test_account(engine, "pro")
    with engine.begin() as conn:
        ledger.grant(conn, account.account_id, 10 * PRICE, now=now)
    roles: dict[str, str] = {}
    for i in range(running):
        job_id = _submit(engine, account.api_key)
        _set(engine, job_id, status="running", attempts=1, lease_owner="live", lease_until=now + 100,
             created_at=now - 300, enqueued_at=now - 300, started_at=now - 200)
        roles[job_id] = f"running {i}"
    if waiting:
        job_id = _submit(engine, account.api_key)
        _set(engine, job_id, created_at=now - 100, enqueued_at=now - 90)
        roles[job_id] = "older waiting"
    job_id = _submit(engine, account.api_key)
    columns = {**STATES[state], "created_at": now - 50, "enqueued_at": now - 50}
    for column in ("lease_until", "finished_at"):
        if column in columns:
            columns[column] = now + columns[column]
    _set(engine, job_id, **columns)
    with engine.begin() as conn:
        if hold == "no hold row":
            conn.execute(text("UPDATE jobs SET hold_id = 'hold_none_' || id WHERE id = :id"), {"id": job_id})
        elif hold != "open":
            conn.execute(text("UPDATE holds SET status = :s WHERE id = (SELECT hold_id FROM jobs WHERE id = :id)"),
                         {"s": hold, "id": job_id})
    roles[job_id] = "claimed"
    return roles


def _state(engine: Engine, roles: dict[str, str]) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT j.id, j.status, j.attempts, j.lease_owner, j.lease_until, j.enqueued_at, j.started_at,"
            " j.finished_at, j.error_code, h.status AS hold, (SELECT COUNT(*) FROM ledger_entries e"
            " WHERE e.hold_id = j.hold_id) AS entries FROM jobs j LEFT JOIN holds h ON h.id = j.hold_id"
            " WHERE j.id = ANY(:ids)"), {"ids": list(roles)}).mappings().all()
    return {roles[r["id"]]: {k: v for k, v in r.items() if k != "id"} for r in rows}


def _outcome(engine: Engine, roles: dict[str, str], cap: int | None, max_attempts: int | None) -> Any:
    """What lifecycle.claim did with the job whose role is "claimed"."""
    job_id = next(j for j, role in roles.items() if role == "claimed")
    try:
        job = lifecycle.claim(engine, job_id, "worker", 30, lambda plan: cap, max_attempts)
    except lifecycle.AccountBusy:
        return "busy"
    except lifecycle.AttemptsExhausted as exhausted:
        return f"failed at its claim: {exhausted.code}"
    except Exception as exc:  # noqa: BLE001 - (a hold row missing fails the general path's refund)
        return f"raised {type(exc).__name__}"
    return None if job is None else f"claimed {roles[job.id]}, attempt {job.attempts}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_pipelined_claim_does_what_the_general_path_does_or_writes_nothing(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch, scenario: str) -> None:
    """Every job state, hold and attempts limit, in each scenario: the same outcome and writes as
    the general path's, and what the pipelined claim leaves to it (a job not runnable, its
    attempts used up, its hold lapsed) it leaves untouched; a claim, or a wait for a slot, it
    decides itself (the common case in one round trip)."""
    cap, running, waiting = SCENARIOS[scenario]
    real = lifecycle_pg.claim
    answers: list[tuple[Any, Any, Any]] = []
    watched: dict[str, Any] = {}

    def watch(*args: Any, **kwargs: Any) -> Any:
        before = _state(pg_engine, watched["roles"])
        answer = real(*args, **kwargs)
        answers.append((answer, before, _state(pg_engine, watched["roles"])))
        return answer

    differences: list[str] = []
    now = datetime.now(UTC).replace(microsecond=0)
    with clock.frozen(now):
        for state, hold, limit in itertools.product(STATES, HOLDS, LIMITS):
            attempts = STATES[state]["attempts"]
            max_attempts = {"none": None, "below": attempts + 1, "at": attempts}[limit]
            case = f"{state}, hold {hold}, attempts limit {limit}"
            general_roles = _build(pg_engine, now.timestamp(), state, hold, running, waiting)
            roles = watched["roles"] = _build(pg_engine, now.timestamp(), state, hold, running, waiting)

            monkeypatch.setattr(lifecycle_pg, "claim", watch)  # the pipelined path, then the general one if need be
            both = _outcome(pg_engine, roles, cap, max_attempts)
            monkeypatch.setattr(lifecycle_pg, "claim", lambda *args, **kwargs: None)  # the general path alone
            general = _outcome(pg_engine, general_roles, cap, max_attempts)
            monkeypatch.setattr(lifecycle_pg, "claim", real)

            answer, before, after = answers.pop()
            if answer is None and after != before:
                differences.append(f"{case}: the pipelined claim wrote, yet left it to the general path:"
                                   f" {before} -> {after}")
            elif answer is None and both is not None and both.startswith(("claimed", "busy")):
                differences.append(f"{case}: left to the general path, which answered {both!r}")
            if both != general:
                differences.append(f"{case}: {both!r}, where the general path: {general!r}")
            if _state(pg_engine, roles) != _state(pg_engine, general_roles):
                differences.append(f"{case}: wrote {_state(pg_engine, roles)},"
                                   f" where the general path: {_state(pg_engine, general_roles)}")
    assert differences == []


@pytest.mark.parametrize("state", ["queued, first run", "running, its lease lapsed"])
def test_a_plan_the_caps_do_not_name_is_left_to_the_general_path_untouched(pg_engine: Engine, state: str) -> None:
    """Its cap unknown, the pipelined claim neither claims the job (as if uncapped) nor sets it
    to wait: it writes nothing, and the general path asks the cap of the plan itself."""
    now = clock.now().timestamp()
    roles = _build(pg_engine, now, state, "open", CAP, True)
    claimed = next(j for j, role in roles.items() if role == "claimed")
    before = _state(pg_engine, roles)
    params = {"id": claimed, "owner": "worker", "until": now + 30, "now": now}

    with pg_statements.connection(pg_engine) as pg:
        answer = lifecycle_pg.claim(pg, PIPELINED, params, {plan: None for plan in PLANS if plan != "pro"}, None)

    assert answer is None
    assert _state(pg_engine, roles) == before


# The claim's statement, made to sleep once it has its snapshot, in the job's read (c).
_SLEEPING = " WHERE (SELECT true FROM pg_sleep(1)) AND j.id = "


def test_a_job_its_worker_requeued_during_a_duplicate_claim_is_not_set_to_wait_with_a_slot_free(
        pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second message's claim of a job running under its worker's live lease reads it leased;
    its worker requeues it (an error, to retry after a backoff) before the claim's wait for a
    slot. The general path, in either order, leaves the job alone (read leased: None) or claims
    it (read queued, a slot free), never AccountBusy with a slot free: that sends its message
    again at once (the backoff cut short) and rewrites its enqueued_at. The claim and its wait
    are one statement: one read of the job decides both."""
    account = create_test_account(pg_engine, "pro")
    with pg_engine.begin() as conn:
        ledger.grant(conn, account.account_id, 10 * PRICE, now=clock.now().timestamp())
    job_id = _submit(pg_engine, account.api_key)
    assert lifecycle.claim(pg_engine, job_id, "worker-1", 30, 4) is not None
    sleeping = PIPELINED.claim.replace(" WHERE j.id = ", _SLEEPING)
    assert sleeping.count("pg_sleep") == 1
    monkeypatch.setattr(lifecycle, "PIPELINED", dataclasses.replace(PIPELINED, claim=sleeping))
    outcome: list[Any] = []

    def duplicate() -> None:
        try:
            outcome.append(lifecycle.claim(pg_engine, job_id, "worker-2", 30, 4))
        except lifecycle.AccountBusy as busy:
            outcome.append(busy)

    thread = threading.Thread(target=duplicate)
    thread.start()
    _wait_for_a_sleeping_statement(pg_engine)  # the claim's statement has its snapshot: the job leased
    assert lifecycle.requeue(pg_engine, job_id, "worker-1", "provider_error", "to retry after a backoff")
    with pg_engine.connect() as conn:
        requeued_at = conn.execute(text("SELECT enqueued_at FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()
    thread.join(timeout=20)
    assert not thread.is_alive()

    assert len(outcome) == 1 and not isinstance(outcome[0], lifecycle.AccountBusy), outcome
    claimed = outcome[0] is not None and outcome[0].id == job_id  # (by the general path, after the pipeline's None)
    assert claimed or outcome[0] is None, outcome
    with pg_engine.connect() as conn:
        row = conn.execute(text("SELECT status, enqueued_at FROM jobs WHERE id = :id"), {"id": job_id}).one()
    assert tuple(row) == ("running" if claimed else "queued", requeued_at)


def _wait_for_a_sleeping_statement(engine: Engine, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            sleeping = conn.execute(text("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                                         " AND wait_event = 'PgSleep'")).scalar_one()
            conn.rollback()  # (a look per transaction: the view holds still within one)
            if sleeping:
                return
            time.sleep(0.01)
    raise AssertionError("the claim's statement never slept")
