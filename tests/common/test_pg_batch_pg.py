"""common.pg_batch: statements sent as one Query message, each prepared once per connection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from common import pg_batch, pg_statements
from tests.conftest import emptied_pg_engine

pytestmark = pytest.mark.postgres

INSERT = pg_batch.prepared("INSERT INTO batch_t (name, note, amount, at, doc) VALUES (%(name)s, %(note)s, %(amount)s,"
                           " %(at)s, CAST(%(doc)s AS jsonb)) RETURNING id")
SELECT = pg_batch.prepared("SELECT name, note, amount, at, doc ->> 'k' FROM batch_t WHERE name = %(name)s"
                           " AND right(note, 12) = %(tail)s AND '100%%' <> %(tail)s")


@pytest.fixture
def pg(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """The one pooled connection of an engine's pg_statements pool, with a table of its session's own."""
    engine = emptied_pg_engine(pg_url, pool_size=1)
    with pg_statements.connection(engine) as conn:
        conn.execute("CREATE TEMP TABLE batch_t (id serial PRIMARY KEY, name text UNIQUE, note text,"
                     " amount bigint, at double precision, doc jsonb)")
        yield conn
    engine.dispose()


def _prepared_names(pg: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in psycopg.ClientCursor(pg).execute("SELECT name FROM pg_prepared_statements")}


def _transaction(name: str, **values: Any) -> list[pg_batch.Step]:
    row = {"name": name, "note": "it's 100% %(name)s; DROP TABLE batch_t; --", "amount": 10**15 + 7,
           "at": 1_765_000_000.123456, "doc": '{"k": "v\\"w"}', **values}
    return [("BEGIN", None), (INSERT, row), (SELECT, {"name": name, "tail": row["note"][-12:]}), ("COMMIT", None)]


def test_a_statement_s_placeholders_become_numbered_parameters() -> None:
    statement = pg_batch.prepared("SELECT %(b)s, %(a)s, %(b)s, '100%%'")

    assert statement.prepare == f"PREPARE {statement.name} AS SELECT $1, $2, $1, '100%'"
    assert statement.execute == f"EXECUTE {statement.name}(%(b)s, %(a)s)"
    assert statement.name.startswith("hx_") and statement.name != pg_batch.prepared("SELECT %(b)s, %(a)s").name
    assert pg_batch.prepared("SELECT 1").execute == f"EXECUTE {pg_batch.prepared('SELECT 1').name}"


def test_a_batch_runs_in_one_round_trip_and_its_values_arrive_intact(pg: psycopg.Connection[Any],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pg_batch.run(pg, _transaction("first"))  # (its statements prepared)
    waits: list[str] = []
    wait = psycopg.Connection.wait

    def counted(conn: psycopg.Connection[Any], gen: Any, *args: Any, **kwargs: Any) -> Any:
        waits.append(conn.info.transaction_status.name)
        return wait(conn, gen, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "wait", counted)

    cursor = pg_batch.run(pg, _transaction("second", note="O'Brien %s %% \\ -- second"))

    assert waits == ["IDLE"] and pg.info.transaction_status.name == "IDLE"
    assert [cursor.set_result(n).statusmessage for n in range(4)] == ["BEGIN", "INSERT 0 1", "SELECT 1", "COMMIT"]
    assert isinstance(cursor.set_result(1).fetchone()[0], int)
    assert cursor.set_result(2).fetchall() == [
        ("second", "O'Brien %s %% \\ -- second", 10**15 + 7, 1_765_000_000.123456, 'v"w')]


def test_a_failing_step_aborts_the_rest_and_rollback_keeps_every_prepared_statement(
        pg: psycopg.Connection[Any]) -> None:
    """The second insert of a name fails: the batch's later steps do not run, its transaction
    awaits ROLLBACK; `rollback` keeps what psycopg prepared itself and what the batch prepared."""
    for _ in range(6):  # psycopg prepares a statement at its fifth use
        pg.execute("SELECT count(*) FROM batch_t WHERE amount > %s", [1])
    pg_batch.run(pg, _transaction("taken"))
    prepared = _prepared_names(pg)
    assert {INSERT.name, SELECT.name} < prepared and any(name.startswith("_pg3_") for name in prepared)

    with pytest.raises(psycopg.errors.UniqueViolation):
        pg_batch.run(pg, [*_transaction("taken")[:2], (INSERT, {"name": "after", "note": "", "amount": 1, "at": 0,
                                                                "doc": "{}"}), ("COMMIT", None)])
    assert pg.info.transaction_status.name == "INERROR"
    pg_batch.rollback(pg)

    assert _prepared_names(pg) == prepared
    assert pg.execute("SELECT name FROM batch_t ORDER BY id").fetchall() == [("taken",)]


@pytest.mark.parametrize("dropped_by", ["DEALLOCATE ALL", "psycopg's own ROLLBACK"])
def test_statements_the_session_lost_are_prepared_again_and_the_batch_sent_once_more(
        pg: psycopg.Connection[Any], dropped_by: str) -> None:
    pg_batch.run(pg, _transaction("before"))
    if dropped_by == "DEALLOCATE ALL":
        pg.execute("DEALLOCATE ALL")
    else:  # a ROLLBACK through psycopg's cache, which then has psycopg send DEALLOCATE ALL
        for _ in range(6):
            pg.execute("SELECT count(*) FROM batch_t WHERE amount > %s", [1])
        pg.execute("BEGIN")
        pg.execute("ROLLBACK")
        pg.execute("SELECT 1")  # (psycopg sends its maintenance with the next statement)
    assert INSERT.name not in _prepared_names(pg)

    cursor = pg_batch.run(pg, _transaction("after"))

    assert cursor.set_result(2).fetchone()[0] == "after"
    assert pg.execute("SELECT name FROM batch_t ORDER BY id").fetchall() == [("before",), ("after",)]
    assert pg.info.transaction_status.name == "IDLE"


def test_a_statement_prepared_but_not_marked_is_taken_as_prepared(pg: psycopg.Connection[Any]) -> None:
    """As after an interrupt between a PREPARE's answer and its mark: the next PREPARE of it is a
    duplicate, which leaves the connection idle and the batch runs."""
    pg.execute(INSERT.prepare)
    pg.execute(SELECT.prepare)

    cursor = pg_batch.run(pg, _transaction("marked late"))

    assert cursor.set_result(2).fetchone()[0] == "marked late"
    assert pg.info.transaction_status.name == "IDLE"


def test_a_batch_that_leaves_its_transaction_open_is_rolled_back_and_refused(pg: psycopg.Connection[Any]) -> None:
    """The resend after a lost statement is safe only for a batch that ends its transaction: one
    without its COMMIT would leave its writes pending on a connection the pool hands out again."""
    pg_batch.run(pg, _transaction("kept"))
    prepared = _prepared_names(pg)

    with pytest.raises(psycopg.ProgrammingError, match="must end its transaction"):
        pg_batch.run(pg, _transaction("left open")[:-1])

    assert pg.info.transaction_status.name == "IDLE"
    assert pg.execute("SELECT name FROM batch_t ORDER BY id").fetchall() == [("kept",)]
    assert _prepared_names(pg) == prepared
