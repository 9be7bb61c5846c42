"""The pipelined claim's statement (transition_sql.CLAIM_PIPELINED) as it is prepared on a
connection (common.pg_batch: SQL PREPARE, its parameters' types inferred from the statement,
`CAST(:max_attempts AS integer)` typing that one) and run with a `max_attempts` of None and of an
int alike: right on a generic plan (its parameters unknown) and on a custom one; so is `:caps`, a
JSON object whose caps may be null."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from common import accounts, clock, ledger, pg_statements
from common.jobs import lifecycle
from common.jobs.submit import submit_job
from common.money import MICRO
from tests.conftest import TEST_TZ, create_test_account

pytestmark = pytest.mark.postgres
PRICE = 3 * MICRO
# (the job's attempts so far, max_attempts, the plan's cap) -> what the claim does
TURNS = {
    "no attempts limit, uncapped": (0, None, None),
    "attempts left, capped": (1, 3, 100),
    "attempts used up, capped": (3, 3, 100),
    "attempts used up, no limit, uncapped": (3, None, None),
    "no attempts limit, no slot": (0, None, 0),
    "attempts left, no slot": (1, 3, 0),
}
EXPECTED = {
    "no attempts limit, uncapped": "claimed",
    "attempts left, capped": "claimed",
    "attempts used up, capped": "failed",
    "attempts used up, no limit, uncapped": "claimed",
    "no attempts limit, no slot": "busy",
    "attempts left, no slot": "busy",
}


def _claimed_statements(engine: Engine) -> list[tuple[str, int, int]]:
    """(parameter types, generic plans, custom plans) of the claim's statements prepared on the
    pool's one connection."""
    with pg_statements.connection(engine) as pg:
        rows = pg.execute("SELECT parameter_types::text, generic_plans, custom_plans FROM pg_prepared_statements"
                          " WHERE statement LIKE 'PREPARE hx\\_% AS WITH c AS (SELECT j.account_id AS aid%'"
                          " ORDER BY parameter_types::text").fetchall()
    return [(str(types), int(generic), int(custom)) for types, generic, custom in rows]


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
def test_the_prepared_claim_decides_alike_with_and_without_an_attempts_limit(one: Engine, mode: str) -> None:
    account = create_test_account(one, "pro")
    now = clock.now().timestamp()
    with one.begin() as conn:
        ledger.grant(conn, account.account_id, 100 * PRICE, now=now)
    principal = accounts.authenticate(one, account.api_key, now=now)
    with pg_statements.connection(one) as pg:
        pg.execute(f"SET plan_cache_mode = {mode}")  # the pool's one connection, for the engine's life
    seen: list[tuple[str, str]] = []
    for _round in range(7):
        for turn, (attempts, max_attempts, cap) in TURNS.items():
            job_id = submit_job(one, principal, job_type="image", model="nano-banana-pro", price=PRICE, tz=TEST_TZ,
                                params={"prompt": "x", "n": 1, "width": 256, "height": 256}).job_id
            with one.begin() as conn:
                conn.execute(text("UPDATE jobs SET attempts = :n WHERE id = :id"), {"n": attempts, "id": job_id})
            try:
                job = lifecycle.claim(one, job_id, "w", 30, lambda plan, cap=cap: cap if plan == "pro" else 1,
                                      max_attempts)
                outcome = "claimed" if job is not None and job.id == job_id else repr(job)
            except lifecycle.AccountBusy:
                outcome = "busy"
            except lifecycle.AttemptsExhausted:
                outcome = "failed"
            seen.append((turn, outcome))
            with one.begin() as conn:  # (its slot freed for the next turn)
                conn.execute(text("UPDATE jobs SET status = 'canceled', lease_until = NULL WHERE id = :id"
                                  " AND status <> 'failed'"), {"id": job_id})

    assert [outcome for _turn, outcome in seen] == [EXPECTED[turn] for turn, _outcome in seen]
    prepared = _claimed_statements(one)
    assert len(prepared) == 1, prepared  # one statement, for max_attempts None and an int
    assert all((generic if mode == "force_generic_plan" else custom) > 0 for _types, generic, custom in prepared)
