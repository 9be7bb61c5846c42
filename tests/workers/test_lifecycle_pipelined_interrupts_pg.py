"""The pipelined claim and success on PostgreSQL (common.jobs.lifecycle_pg) when things go wrong
mid-way: an interrupt (Dramatiq's TimeLimitExceeded, a BaseException raised asynchronously in the
worker thread) landing inside psycopg's pipeline bookkeeping, a reply lost after COMMIT, rolled
back pipelines. common.pg_statements' pool does not reset what it gets back: a connection left in
pipeline mode, or with psycopg's pipeline still attached, made its next user (a chat reservation
here) hang forever holding the account's row lock, or misread its answer (a review found both).

The interrupt is delivered with sys.settrace at one chosen line of psycopg (as
PyThreadState_SetAsyncExc would at that bytecode)."""

from __future__ import annotations

import contextlib
import linecache
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from common import accounts, billing, clock, ledger, ledger_pg, pg_statements, retrying
from common.db import make_engine
from common.jobs import lifecycle
from common.jobs.submit import submit_job
from common.money import MICRO
from tests.api.chat.helpers import assert_books_balance
from tests.conftest import TEST_TZ, create_test_account, emptied_pg_engine
from tests.integration.races_books import open_transactions

pytestmark = pytest.mark.postgres
PRICE = 3 * MICRO
TZ = TEST_TZ


class TimeLimitExceeded(BaseException):  # as dramatiq.middleware.time_limit's (an Interrupt)
    pass


@pytest.fixture
def one(pg_url: str) -> Iterator[Engine]:
    """An engine whose pg_statements pool has ONE connection: the next user gets the same one."""
    engine = emptied_pg_engine(pg_url, pool_size=1)
    yield engine
    with engine.connect() as conn:  # free whatever a hung probe holds
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    engine.dispose()


def _interrupted_at(path_part: str, source_part: str, fn: Callable[[], Any], occurrence: int = 1) -> BaseException:
    seen = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal seen
        if "/psycopg/" not in frame.f_code.co_filename and "/common/" not in frame.f_code.co_filename:
            return tracer if event == "call" else None
        if event == "line" and frame.f_code.co_filename.endswith(path_part) and \
                source_part in linecache.getline(frame.f_code.co_filename, frame.f_lineno):
            seen += 1
            if seen == occurrence:
                raise TimeLimitExceeded(f"{path_part}: {source_part}")
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001
        return exc
    finally:
        sys.settrace(None)
    raise AssertionError("the interrupt point was not reached")


def _setup(engine: Engine) -> tuple[str, str, str]:
    account = create_test_account(engine, "pro")
    with engine.begin() as conn:
        ledger.grant(conn, account.account_id, 100 * PRICE, now=clock.now().timestamp())
    principal = accounts.authenticate(engine, account.api_key, now=clock.now().timestamp())
    job_id = submit_job(engine, principal, job_type="image", model="nano-banana-pro", price=PRICE, tz=TZ,
                        params={"prompt": "x", "n": 1, "width": 256, "height": 256}).job_id
    return account.account_id, account.api_key, job_id


def _reserve_in_thread(engine: Engine, account_id: str, seconds: float = 5.0) -> tuple[bool, list[Any]]:
    """The next user of the pool: a chat reservation (ledger_pg.reserve, autocommit, one statement)."""
    out: list[Any] = []

    def run() -> None:
        try:
            with pg_statements.connection(engine) as pg:
                out.append(ledger_pg.reserve(pg, account_id=account_id, key_id=None, amount=1, purpose="chat",
                                             now=clock.now().timestamp(), ttl=60))
        except BaseException as exc:  # noqa: BLE001
            out.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    return worker.is_alive(), out


def _account_row_locked(engine: Engine, account_id: str) -> bool:
    with engine.begin() as conn:
        try:
            conn.execute(text("SELECT 1 FROM accounts WHERE id = :a FOR UPDATE NOWAIT"), {"a": account_id})
            return False
        except Exception:  # noqa: BLE001 - LockNotAvailable
            return True


def _transition(engine: Engine, job_id: str, name: str) -> Callable[[], Any]:
    """The job's claim, or (claimed first) its success: what the interrupt is to land in."""
    if name == "claim":
        return lambda: lifecycle.claim(engine, job_id, "w", 30, lambda plan: 4)
    job = lifecycle.claim(engine, job_id, "w", 30, lambda plan: 4)
    assert job is not None
    files = [{"id": f"file_{job_id}", "storage_key": "k", "content_type": "image/png", "bytes": 1}]
    return lambda: lifecycle.succeed(engine, job, "w", files, 3600, billing.today(TZ))


def _warmed_up(engine: Engine, api_key: str) -> None:
    """A job claimed and succeeded first: the transitions' statements are prepared on the pool's one
    connection, so what follows sends only its transaction (one execute)."""
    principal = accounts.authenticate(engine, api_key, now=clock.now().timestamp())
    job_id = submit_job(engine, principal, job_type="image", model="nano-banana-pro", price=PRICE, tz=TZ,
                        params={"prompt": "x", "n": 1, "width": 256, "height": 256}).job_id
    job = lifecycle.claim(engine, job_id, "w", 30, lambda plan: 4)
    assert job is not None
    files = [{"id": f"file_{job_id}", "storage_key": "k", "content_type": "image/png", "bytes": 1}]
    assert lifecycle.succeed(engine, job, "w", files, 3600, billing.today(TZ)) is True


def _next_user_unharmed(engine: Engine, account_id: str) -> None:
    assert open_transactions(engine) == 0  # nothing is left open on the server
    hung, out = _reserve_in_thread(engine, account_id)
    locked = _account_row_locked(engine, account_id)
    assert not hung, f"the next user of the pooled connection hangs; meanwhile the account row is locked: {locked}"
    # 100 * PRICE granted, one job's PRICE held at most: a 1-credit reservation must succeed
    assert out and isinstance(out[0], str), f"the next user's reservation answered {out[0]!r}"


@pytest.mark.parametrize("transition", ["claim", "succeed"])
def test_an_interrupt_once_the_transaction_is_answered_is_raised_as_itself_and_spares_the_next_user(
        one: Engine, transition: str) -> None:
    """The interrupt lands after the server answered the whole transaction, COMMIT included, before
    the cursor takes the answer: the last point it can land at (the send and the wait are psycopg's
    C code). It is raised as itself, not as an error common.retrying takes for an outage (as
    psycopg's pipeline mode once put in its place), and the connection's next user is unharmed."""
    account_id, api_key, job_id = _setup(one)
    _warmed_up(one, api_key)
    act = _transition(one, job_id, transition)

    exc = _interrupted_at("_cursor_base.py", "self._check_results(results)", act)

    assert isinstance(exc, TimeLimitExceeded), (
        f"raised {type(exc).__name__}: {exc} (is_unreachable: {retrying.is_unreachable(exc)}, "
        f"in DATABASE_DOWN: {isinstance(exc, retrying.DATABASE_DOWN)})")
    _next_user_unharmed(one, account_id)


@pytest.mark.parametrize("transition", ["claim", "succeed"])
def test_an_interrupt_between_a_prepare_and_its_mark_leaves_the_statement_usable(one: Engine, transition: str) -> None:
    """common.pg_batch marks a statement prepared on a connection once its PREPARE is answered. The
    interrupt in between, not an Exception, has common.pg_statements throw the connection away (its
    session, and what it prepared, with it): the transition prepares its statements again on the
    next one and works, as does every other user of the pool. (On a connection kept after such a
    gap the next PREPARE would be a duplicate, taken for what it says: test_pg_batch_pg.)"""
    account_id, api_key, job_id = _setup(one)
    act = _transition(one, job_id, transition)

    exc = _interrupted_at("common/pg_batch.py", "names.add(statement.name)", act)
    assert isinstance(exc, TimeLimitExceeded)
    with pg_statements.connection(one) as pg:  # a new session: nothing of the interrupted one's
        assert pg.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)

    assert act() is not None  # the claim's job (claimed again: the interrupt came before its transaction), or True
    _next_user_unharmed(one, account_id)
    _warmed_up(one, api_key)


def test_an_interrupt_before_the_rollback_of_a_job_no_longer_ours_frees_the_account_row(one: Engine) -> None:
    """The success of a job no longer ours fails on purpose in its transaction, the settlement done
    and the account row locked; an interrupt before its ROLLBACK leaves the connection in a failed
    transaction: thrown away (common.pg_statements), which ends it: the row is free, nothing charged."""
    account_id, api_key, job_id = _setup(one)
    _warmed_up(one, api_key)
    job = lifecycle.claim(one, job_id, "w", 30, lambda plan: 4)
    assert job is not None
    files = [{"id": f"file_{job_id}", "storage_key": "k", "content_type": "image/png", "bytes": 1}]
    before = assert_books_balance(one, account_id, open_holds=1)

    exc = _interrupted_at("common/jobs/lifecycle_pg.py", "pg_batch.rollback(pg)",
                          lambda: lifecycle.succeed(one, job, "someone-else", files, 3600, billing.today(TZ)))

    assert isinstance(exc, TimeLimitExceeded)
    _next_user_unharmed(one, account_id)
    with one.connect() as conn:
        assert conn.execute(text("SELECT status, charged FROM jobs WHERE id = :id"), {"id": job_id}).one() == \
            ("running", 0)
    after = assert_books_balance(one, account_id, open_holds=2)  # the job's hold, and the next user's 1 credit
    assert after.balance == before.balance


class _CuttingProxy:
    """127.0.0.1:<port> -> PostgreSQL; once armed, the first client packet with COMMIT in it is
    forwarded, nothing the server sends that connection after it reaches the client, and (the
    server having had time to commit) both sides are cut: a lost reply, whatever the packets'
    timing (forwarding the server's answers meanwhile let the reply through, one run in three, when
    the client's COMMIT and Sync came in one packet)."""

    def __init__(self, target_port: int) -> None:
        import socket
        self.armed = False
        self.cut = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            cut = threading.Event()  # this connection's: its replies are dropped from the COMMIT on
            threading.Thread(target=self._pump, args=(client, server, True, cut), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, cut), daemon=True).start()

    def _pump(self, src: Any, dst: Any, upstream: bool, cut: threading.Event) -> None:
        import socket
        import time
        try:
            while data := src.recv(65536):
                if not upstream and cut.is_set():
                    return  # the COMMIT's reply never reaches the client, even with its Sync in the same packet
                cutting = upstream and self.armed and b"COMMIT" in data
                if cutting:  # before the send: the server may answer at once
                    self.armed, self.cut = False, True
                    cut.set()
                dst.sendall(data)
                if cutting:
                    time.sleep(0.3)
                    for sock in (src, dst):
                        sock.shutdown(socket.SHUT_RDWR)
                    return
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self.listener.close()


def test_a_reply_lost_after_the_success_s_commit_is_seen_as_an_outage_and_has_result_wins(pg_url: str) -> None:
    """The COMMIT reaches the server and commits, the reply is lost (the connection cut): the
    success raises an error of DATABASE_DOWN that is_unreachable, the retry (as workers.execute
    does) finds the job no longer ours, has_result says it is our own commit: charged once."""
    from sqlalchemy.engine import make_url

    from tests.api.chat.helpers import assert_books_balance

    url = make_url(pg_url)
    proxy = _CuttingProxy(url.port or 5432)
    one = make_engine(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), pool_size=1)
    try:
        with one.begin() as conn:
            conn.execute(text("TRUNCATE accounts, api_keys, holds, ledger_entries, generations, jobs, files CASCADE"))
        account_id, _, job_id = _setup(one)
        job = lifecycle.claim(one, job_id, "w", 30, lambda plan: 4)
        assert job is not None
        files = [{"id": f"file_{job_id}", "storage_key": "k", "content_type": "image/png", "bytes": 1}]
        before = assert_books_balance(one, account_id, open_holds=1)

        def succeed() -> bool:
            return lifecycle.succeed(one, job, "w", files, 3600, billing.today(TZ))

        proxy.armed = True
        with pytest.raises(retrying.DATABASE_DOWN) as lost:
            succeed()
        assert proxy.cut and retrying.is_unreachable(lost.value), repr(lost.value)
        with one.connect() as conn:
            assert conn.execute(text("SELECT status FROM jobs WHERE id = :id"),
                                {"id": job_id}).scalar_one() == "succeeded"
        won = retrying.while_database_down(succeed) or lifecycle.has_result(one, job_id, [f["id"] for f in files])
        assert won
        after = assert_books_balance(one, account_id)
        assert before.balance - after.balance == PRICE
        with one.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'settle'")).scalar_one() == 1
    finally:
        one.dispose()
        proxy.close()


def test_repeated_rolled_back_successes_keep_prepared_statements_usable(one: Engine) -> None:
    """The pipelined success's ROLLBACK (a job no longer ours) must not leave common.pg_batch
    naming statements the server lost (a PREPARE outlives the transactions after it; psycopg's
    own cache of what it prepared goes through the same ROLLBACK)."""
    _account_id, api_key, _ = _setup(one)
    principal = accounts.authenticate(one, api_key, now=clock.now().timestamp())
    for _i in range(8):
        job_id = submit_job(one, principal, job_type="image", model="nano-banana-pro", price=PRICE, tz=TZ,
                            params={"prompt": "x", "n": 1, "width": 256, "height": 256}).job_id
        job = lifecycle.claim(one, job_id, "w", 30, lambda plan: 100)
        assert job is not None
        files = [{"id": f"file_{job_id}", "storage_key": "k", "content_type": "image/png", "bytes": 1}]
        assert lifecycle.succeed(one, job, "other-owner", files, 3600, billing.today(TZ)) is False  # ROLLBACK
        assert lifecycle.succeed(one, job, "w", files, 3600, billing.today(TZ)) is True



def _row_statement_plans(engine: Engine) -> tuple[int, int]:
    """(generic, custom) plans the success's row statement (transition_sql.SUCCEED_SETTLED_HERE) ran
    on as a prepared statement of the pool's one connection; (0, 0) while it is not prepared."""
    with pg_statements.connection(engine) as pg:
        row = pg.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement"
                         " LIKE 'PREPARE hx\\_% AS WITH s AS (SELECT EXISTS (SELECT 1 FROM holds%'").fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
def test_the_prepared_row_statement_fails_on_purpose_only_for_a_job_no_longer_ours(one: Engine, mode: str) -> None:
    """The row statement is prepared on the connection (common.pg_batch). On a generic plan (its
    parameters unknown) and on a custom one (their values folded in), its deliberate error fires
    for a job no longer ours (all rolled back), never when the settlement stood aside (an earlier
    day's allowance: the general path settles) or settled our job."""
    account_id, api_key, first = _setup(one)
    assert lifecycle.cancel(one, account_id, first)  # (its hold released: the books count one hold at a time)
    principal = accounts.authenticate(one, api_key, now=clock.now().timestamp())
    with pg_statements.connection(one) as pg:
        pg.execute(f"SET plan_cache_mode = {mode}")  # the pool's one connection, for the engine's life
    today = billing.today(TZ)
    tomorrow = (date.fromisoformat(today) + timedelta(days=1)).isoformat()
    index = 0 if mode == "force_generic_plan" else 1
    for turn in ["ours"] * 6 + ["aside", "not ours"]:
        job_id = submit_job(one, principal, job_type="image", model="nano-banana-pro", price=PRICE, tz=TZ,
                            params={"prompt": "x", "n": 1, "width": 256, "height": 256}).job_id
        job = lifecycle.claim(one, job_id, "w", 30, lambda plan: 100)
        assert job is not None
        files = [{"id": f"file_{job_id}", "storage_key": "k", "content_type": "image/png", "bytes": 1}]
        before, plans = assert_books_balance(one, account_id, open_holds=1), _row_statement_plans(one)
        owner, day = ("other", today) if turn == "not ours" else ("w", tomorrow if turn == "aside" else today)

        assert lifecycle.succeed(one, job, owner, files, 3600, day) is (turn != "not ours"), turn

        if turn != "ours":  # run as the prepared statement, on a plan of the mode's kind
            assert plans[index] > 0, (turn, plans)
        if turn == "aside":
            assert _row_statement_plans(one)[index] == plans[index] + 1
        with one.connect() as conn:
            row = conn.execute(text("SELECT j.status, j.charged, h.status, (SELECT array_agg(-e.amount) FROM"
                                    " ledger_entries e WHERE e.hold_id = h.id AND e.kind = 'settle')"
                                    " FROM jobs j JOIN holds h ON h.id = j.hold_id WHERE j.id = :j"),
                               {"j": job_id}).one()
        if turn == "not ours":
            assert tuple(row) == ("running", 0, "open", None)
            assert assert_books_balance(one, account_id, open_holds=1) == before
        else:  # charged once (the aside's balance also gained the next day's reset)
            assert tuple(row) == ("succeeded", PRICE, "settled", [PRICE])
            assert_books_balance(one, account_id)
    assert lifecycle.succeed(one, job, "w", files, 3600, tomorrow) is True  # the connection is clean after
    assert open_transactions(one) == 0
