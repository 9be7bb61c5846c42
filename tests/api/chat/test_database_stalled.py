"""The API when PostgreSQL stops answering on connections already open (a frozen server, a
network that drops packets): every request ends, in bounded time, with a 503 or what it can
answer without the database. They waited for ever (an operator review): /readyz said nothing,
/metrics timed out (losing the HTTP counters too), and chat and job polls hung."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from common import pg_async
from common.db import normalize_url
from tests.api.chat.helpers import Gateway, GatewayFactory, assert_books_balance, books
from tests.conftest import TestAccount
from tests.fakes.freezable_proxy import FreezableProxy, freezable_proxy

pytestmark = pytest.mark.postgres
HI = [{"role": "user", "content": "hello"}]


@pytest.fixture
def stalled(make_gateway: GatewayFactory, pg_url: str, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[Gateway, FreezableProxy, TestAccount]]:
    monkeypatch.setattr(pg_async, "STATEMENT_SECONDS", 1.0)
    monkeypatch.setattr(pg_async, "WATCH_SECONDS", 0.1)
    url = make_url(normalize_url(pg_url))
    with freezable_proxy(url.host or "127.0.0.1", url.port or 5432, refuse_new_when_frozen=False) as proxy:
        gw = make_gateway(database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(False),
                          simulate="1")
        account = gw.account()
        with gw.http(account) as http:  # every pool holds an open connection
            assert http.post("/chat/completions", json={"model": "helyx-3.5", "messages": HI}).status_code == 200
            assert http.get(gw.url + "/readyz").status_code == 200 and http.get(gw.url + "/metrics").status_code == 200
        yield gw, proxy, account


def _timed(call: object) -> tuple[object, float]:
    started = time.monotonic()
    result = call()  # type: ignore[operator]
    return result, time.monotonic() - started


def test_readiness_and_metrics_answer_within_seconds_when_the_database_stalls(
        stalled: tuple[Gateway, FreezableProxy, TestAccount]) -> None:
    gw, proxy, _ = stalled
    proxy.frozen.set()
    with gw.http(timeout=30) as http:
        ready, waited = _timed(lambda: http.get(gw.url + "/readyz"))
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("error"), ready.text
        assert waited < 6, waited  # a new connection's handshake, bounded (2 s)
        metrics, waited = _timed(lambda: http.get(gw.url + "/metrics"))
        assert metrics.status_code == 200 and waited < 6, waited
        assert "helyx_http_requests_total" in metrics.text and "helyx_open_holds " not in metrics.text
    proxy.frozen.clear()
    with gw.http() as http:
        assert http.get(gw.url + "/readyz").status_code == 200


def test_a_chat_and_a_job_poll_are_503_in_bounded_time_when_the_database_stalls(
        stalled: tuple[Gateway, FreezableProxy, TestAccount]) -> None:
    gw, proxy, account = stalled
    before = books(gw.engine, account.account_id)
    proxy.frozen.set()
    with gw.http(account, timeout=60) as http:
        chat, waited = _timed(lambda: http.post("/chat/completions",
                                                json={"model": "helyx-3.5", "messages": HI}))
        assert chat.status_code == 503 and chat.json()["error"]["type"] == "server_error", chat.text
        assert waited < 20, waited  # its deadline (1 s here, 10 s by default) and psycopg's cancellation
        poll, waited = _timed(lambda: http.get("/jobs/job_0123456789abcdef"))
        assert poll.status_code == 503 and waited < 20, (poll.text, waited)
    proxy.frozen.clear()
    time.sleep(0.5)  # what the proxy held reaches the server now: the reservation may run (and lapse)
    # One open hold, if the reservation ran after all: it lapses at its expiry, charged nothing.
    # (One read: the held statement may still land between two.)
    after = assert_books_balance(gw.engine, account.account_id, open_holds=(0, 1))
    assert after.balance == before.balance
