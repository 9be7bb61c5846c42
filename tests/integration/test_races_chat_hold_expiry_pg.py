"""A chat's late settlement meeting its hold's expiry on PostgreSQL (an adversarial review's
interleavings): the hold is resolved once, released or charged, never both."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from common import accounts, billing, chat_billing, clock, ledger, ledger_pg, pg_statements, retrying
from common.catalog import load_catalog
from common.chat_billing import Outcome, Reservation
from common.providers.base import Usage
from tests.conftest import TEST_TZ, create_test_account, make_settings
from tests.integration.races_books import assert_books, hold_row, past_its_expiry, run_threads, wait_for_a_lock_wait

pytestmark = pytest.mark.postgres
TZ = TEST_TZ


@pytest.fixture
def chat(pg_engine: Engine, tmp_path: Any) -> Callable[..., Any]:
    """A chat call's reservation, as the API makes it, and its settlement (finish_chat)."""
    entry = load_catalog(make_settings(tmp_path)).get("gpt-4o")

    def make(plan: str = "pro") -> Any:
        account = create_test_account(pg_engine, plan)
        principal = accounts.authenticate(pg_engine, account.api_key, now=clock.now().timestamp())
        gid = f"chatcmpl-{random.getrandbits(64):016x}"
        with pg_statements.connection(pg_engine) as pg:
            hold_id = ledger_pg.reserve(pg, account_id=principal.account_id, key_id=principal.key_id,
                                        amount=(20 + 100) * entry.rate_micro, purpose=f"chat:{gid}",
                                        now=clock.now().timestamp(), ttl=900)
        assert hold_id is not None
        reservation = Reservation(hold_id, 100, 20)

        def finish(prompt: int = 12, completion: int = 40) -> ledger.Settlement:
            return retrying.while_database_down(lambda: chat_billing.finish_chat(
                pg_engine, principal, entry, reservation, Outcome(gid, "succeeded", Usage(prompt, completion)),
                stream=False, started=clock.now().timestamp(), day=billing.today(TZ)), patience=20)

        return principal, reservation, finish, (12 + 40) * entry.rate_micro

    return make


def test_a_chat_settled_after_the_sweeper_expired_its_hold_charges_nothing_and_counts_the_hold_once(
        pg_engine: Engine, chat: Callable[..., Any]) -> None:
    principal, reservation, finish, _ = chat()
    before = assert_books(pg_engine, principal.account_id, open_holds=1)
    past_its_expiry(pg_engine, reservation.hold_id)

    assert billing.expire_holds(pg_engine) == 1
    settlement = finish()

    assert (settlement.applied, settlement.charged) == (False, 0)  # too late: released, not also charged
    assert hold_row(pg_engine, reservation.hold_id).status == "expired"
    after = assert_books(pg_engine, principal.account_id)  # its generation records the 0 it cost
    assert after["allowance"] + after["topup"] == before["allowance"] + before["topup"]
    assert billing.expire_holds(pg_engine) == 0 and finish().charged == 0  # both again: no-ops


@pytest.mark.parametrize("sweeper_first", [True, False])
def test_a_chat_settlement_meeting_the_expiry_of_its_hold_resolves_it_once(
        pg_engine: Engine, chat: Callable[..., Any], sweeper_first: bool) -> None:
    """The sweeper (hold row, then account row) paused holding the hold, the one-statement settlement
    (account row, then hold row) waiting on it, or the other way round: PostgreSQL breaks the deadlock
    by aborting one, which the settlement rides out (while_database_down) and the sweeper skips."""
    principal, reservation, finish, charge = chat()
    past_its_expiry(pg_engine, reservation.hold_id)
    paused, go = threading.Event(), threading.Event()

    def pause(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.current_thread().name == "t0" and statement.startswith("UPDATE holds SET status"):
            paused.set()
            go.wait(30)

    event.listen(pg_engine, "after_cursor_execute", pause)

    def sweeper() -> Any:
        return billing.expire_holds(pg_engine)

    def settle() -> Any:
        assert paused.wait(10)
        return finish()

    try:
        if sweeper_first:
            def release() -> Any:
                wait_for_a_lock_wait(pg_engine)
                go.set()

            swept, settled, _ = run_threads(sweeper, settle, release)
        else:  # the settlement holds the account row (a pending grant keeps it there), the sweeper the hold
            with pg_engine.connect() as blocker:
                tx = blocker.begin()
                blocker.execute(text("SELECT 1 FROM accounts WHERE id = :a FOR UPDATE"), {"a": principal.account_id})

                def release() -> Any:
                    wait_for_a_lock_wait(pg_engine)
                    time.sleep(0.2)
                    go.set()
                    time.sleep(0.2)
                    tx.rollback()

                swept, settled, _ = run_threads(sweeper, settle, release)
    finally:
        event.remove(pg_engine, "after_cursor_execute", pause)
        go.set()

    assert isinstance(settled, ledger.Settlement), settled
    hold = hold_row(pg_engine, reservation.hold_id)
    if hold.status == "settled":  # the sweeper was the one aborted
        assert settled.applied and settled.charged == charge == hold.charged
        assert isinstance(swept, Exception) and "deadlock" in str(swept), swept
    else:  # the settlement was aborted, or waited: it found the hold expired and charged nothing
        assert hold.status == "expired" and swept == 1, (hold.status, swept)
        assert (settled.applied, settled.charged) == (False, 0)
    assert_books(pg_engine, principal.account_id)


# --- a job's late success and its hold's expiry ------------------------------------------------


