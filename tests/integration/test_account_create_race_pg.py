"""On PostgreSQL, creations of one mailbox at once (the admin API's, in several processes) make one
account: the others are a 409, never a second account under another letter case, nor a 500 from
the unique index."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, text

from common import accounts, billing, clock
from common.errors import Conflict
from tests.conftest import TEST_TZ

SPELLINGS = ["dup0@example.com", "DUP0@example.com", "Dup0@Example.com", "dUp0@example.COM"] * 3


def test_one_mailbox_created_at_once_in_any_letter_case_is_one_account(pg_engine: Engine) -> None:
    start = threading.Barrier(len(SPELLINGS))
    made: list[str] = []
    refused: list[Conflict] = []
    failed: list[BaseException] = []

    def create(email: str) -> None:
        start.wait()
        try:
            with pg_engine.begin() as conn:
                made.append(accounts.create_account(conn, email, "free", day=billing.today(TEST_TZ),
                                                    now=clock.now().timestamp())[0])
        except Conflict as exc:
            refused.append(exc)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            failed.append(exc)

    threads = [threading.Thread(target=create, args=(email,)) for email in SPELLINGS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert failed == [] and len(made) == 1 and len(refused) == len(SPELLINGS) - 1
    assert {exc.code for exc in refused} == {"account_exists"}
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM accounts WHERE lower(email) = 'dup0@example.com'")
                            ).scalar_one() == 1
