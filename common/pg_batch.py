"""Several statements sent to PostgreSQL as ONE simple-protocol Query message: one write, one answer.

A transaction whose statements need no answer before the next (BEGIN, its statements, COMMIT)
goes in one round trip either way, through psycopg's pipeline mode or as one Query message. The
pipeline costs the client two to three times the CPU (a generator turn, a wait on the socket and a
write for every statement, and the pipeline's bookkeeping: bench/README, fortieth round); in a
worker process whose eight threads share one GIL, that was a tenth of the GIL's time. Here the
whole transaction is one string, sent in one `execute`.

The simple protocol takes no parameters, so each statement is prepared on the server once per
connection (SQL `PREPARE`, sent on its own the first time the connection runs it; it outlives any
transaction, a rolled-back one included) and run as `EXECUTE name(literal, ...)`: the server
plans it as it would a statement psycopg prepares, and psycopg's ClientCursor writes the
literals (escaped as psycopg escapes every client-side parameter). A statement's name is its
text's digest, so a changed statement is another one.

The caller's statements run in order; the first that fails aborts the rest of the string (and an
explicit transaction it opened, which then awaits the caller's `rollback`), as in a pipeline.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement in psycopg's placeholder form (`%(name)s`), as PREPARE and EXECUTE run it."""

    name: str
    prepare: str  # PREPARE name AS ... with $1, $2, ... in the placeholders' places
    execute: str  # EXECUTE name(%(a)s, ...): the parameters in $n's order, for ClientCursor to bind


@lru_cache(maxsize=256)
def prepared(sql: str) -> Prepared:
    """`sql` (psycopg's form: `%(name)s` placeholders, `%%` a percent sign) as a Prepared. A name
    used several times is one parameter, as psycopg sends it."""
    order: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    body = _PLACEHOLDER.sub(numbered, sql)
    name = "hx_" + hashlib.sha256(sql.encode()).hexdigest()[:24]
    arguments = ", ".join(f"%({parameter})s" for parameter in order)
    return Prepared(name, f"PREPARE {name} AS {body}", f"EXECUTE {name}({arguments})" if order else f"EXECUTE {name}")


Step = tuple[str, None] | tuple[Prepared, Mapping[str, Any]]

_prepared_on: weakref.WeakKeyDictionary[psycopg.Connection, set[str]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def run(pg: psycopg.Connection, steps: Sequence[Step]) -> psycopg.ClientCursor[Any]:
    """Send `steps` (plain statements without parameters, e.g. BEGIN and COMMIT, and Prepared
    ones with theirs) in one Query message and return the cursor on the first one's result
    (`cursor.set_result(n)` moves to the n-th). Raises what the first failing step raised.

    A statement the session no longer has (a `DEALLOCATE ALL` since: psycopg sends one after a
    ROLLBACK or DDL it runs itself, see `rollback`) fails the batch, which then commits nothing (a
    batch is one transaction, its COMMIT last: both callers' are BEGIN ... COMMIT); its statements
    are prepared again and the batch sent once more. That resend is safe only because a batch ends
    its transaction: one that leaves it open is rolled back and refused (ProgrammingError)."""
    try:
        cursor = _send(pg, steps)
    except psycopg.errors.InvalidSqlStatementName:
        if pg.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            rollback(pg)
        _prepared_on.pop(pg, None)
        cursor = _send(pg, steps)
    if pg.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        rollback(pg)
        raise psycopg.ProgrammingError("a pg_batch batch must end its transaction (COMMIT last); rolled back")
    return cursor


def rollback(pg: psycopg.Connection) -> None:
    """ROLLBACK, out of psycopg's sight: on a ROLLBACK it runs while it has statements of its own
    prepared, psycopg forgets them and sends `DEALLOCATE ALL` (in case the transaction made what they
    name), which would drop this module's statements too. The transactions rolled back here make
    nothing of the kind."""
    threshold = pg.prepare_threshold
    pg.prepare_threshold = None  # (psycopg's statement cache then leaves the statement alone)
    try:
        pg.execute("ROLLBACK")
    finally:
        pg.prepare_threshold = threshold


def _send(pg: psycopg.Connection, steps: Sequence[Step]) -> psycopg.ClientCursor[Any]:
    cursor = psycopg.ClientCursor(pg)
    parts: list[str] = []
    for statement, params in steps:
        if isinstance(statement, str):
            parts.append(statement)
            continue
        _ensure_prepared(pg, statement)
        parts.append(cursor.mogrify(statement.execute, params))
    cursor.execute("; ".join(parts))
    return cursor


def _ensure_prepared(pg: psycopg.Connection, statement: Prepared) -> None:
    """PREPARE the statement on this connection's session, once. Marked once it is prepared; an
    interrupt (Dramatiq's time limit) between the two makes the next PREPARE a duplicate, taken
    for what it says. (One during the PREPARE leaves the connection busy: common.pg_statements
    throws it away.)"""
    with _lock:
        names = _prepared_on.setdefault(pg, set())
    if statement.name in names:
        return
    with contextlib.suppress(psycopg.errors.DuplicatePreparedStatement):  # (prepared by this session already)
        pg.execute(statement.prepare)
    names.add(statement.name)
