"""One mailbox is one account on either database, whatever its spelling: letter case beyond ASCII
(SQLite's lower() folds ASCII only, so É@ and é@ made two accounts there, one on PostgreSQL) and
the two Unicode spellings of an accented letter; an address with invisible formatting characters
(which could pass for another) is refused. Found by a security review."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from common import accounts, billing, clock
from common.errors import Conflict, InvalidRequest


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue("engine" if request.param == "sqlite" else "pg_engine")


def _create(engine: Engine, email: str) -> str:
    with engine.begin() as conn:
        return accounts.create_account(conn, email, "free", day=billing.today("UTC"), now=clock.now().timestamp())[0]


@pytest.mark.parametrize(("first", "second"), [
    ("é@example.com", "É@example.com"),
    ("ÉLODIE@example.com", "élodie@EXAMPLE.com"),
    ("josé@example.com", "jose\u0301@example.com"),  # é as one code point, then as e and a combining accent
    ("straße@example.com", "STRASSE@example.com".replace("SS", "ß")),
])
def test_one_mailbox_in_any_spelling_is_one_account(db: Engine, first: str, second: str) -> None:
    account_id = _create(db, first)
    with pytest.raises(Conflict):
        _create(db, second)
    with db.connect() as conn:
        assert conn.execute(text("SELECT id FROM accounts")).scalars().all() == [account_id]


def test_an_address_is_stored_in_one_unicode_spelling(db: Engine) -> None:
    account_id = _create(db, "jose\u0301@example.com")
    with db.connect() as conn:
        stored = conn.execute(text("SELECT email FROM accounts WHERE id = :a"), {"a": account_id}).scalar_one()
    assert stored == "josé@example.com" and len(stored) == len("jose@example.com")


@pytest.mark.parametrize("email", ["admin\u202e@example.com", "a\u200bb@example.com", "\u2060x@example.com"])
def test_invisible_formatting_characters_are_refused(db: Engine, email: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _create(db, email)
    assert refused.value.param == "email" and "invisible" in refused.value.message
    with db.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM accounts")).scalar_one() == 0
