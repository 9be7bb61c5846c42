"""A webhook host whose name server answers slowly (an attacker's, on purpose) holds only the webhook
resolver's own threads, for at most its timeout: never the API's shared thread pool, which every
route uses, nor a worker thread past the timeout. Before, 42 submissions naming such a host made
another account's GET /credits wait 7.7 s (found by an adversarial review)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.concurrency import run_in_threadpool

from common import ssrf
from common.ssrf import (
    NonPublicAddress,
    WebhookHostUnresolved,
    WebhookURLRefused,
    bounded_getaddrinfo,
    check_url_in_time,
)
from common.webhooks import deliver
from tests.waiting import until

BLOCKED = 10.0  # the longest a slow lookup blocks, if the test never lets it end
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PUBLIC = "93.184.215.14"  # never connected to: deliveries here go through an httpx.MockTransport


class SlowDNS:
    """Names under .slowdns.test block until `release` is set, then fail: a lookup given up is
    given up while its lookup still runs, whatever the machine's speed (not a race with a sleep)."""

    def __init__(self) -> None:
        self.looked_up: list[str] = []
        self.release = threading.Event()
        self.running = 0
        self._lock = threading.Lock()

    def lookup(self, host: str) -> None:
        with self._lock:
            self.looked_up.append(host)
            self.running += 1
        try:
            self.release.wait(BLOCKED)
            raise socket.gaierror("gave up")
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowDNS]:
    real = socket.getaddrinfo
    slow = SlowDNS()

    def lookup(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host.endswith(".slowdns.test"):
            slow.lookup(host)
        if host == "hooks.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(ssrf, "DNS_TIMEOUT_SECONDS", 0.3)
    yield slow
    slow.release.set()  # the resolver's threads still in a slow lookup: free again for the next test
    until(lambda: slow.running == 0, "a slow lookup's thread never ended", seconds=BLOCKED)


@pytest.mark.usefixtures("slow_dns")
def test_slow_lookups_are_given_up_and_never_hold_the_shared_thread_pool() -> None:
    async def scenario() -> tuple[list[BaseException | None], float]:
        checks = [asyncio.create_task(check_url_in_time(f"http://w{i}.slowdns.test/hook", False)) for i in range(42)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await run_in_threadpool(lambda: None)  # what GET /credits waits for
        probe = time.monotonic() - started
        results = await asyncio.gather(*checks, return_exceptions=True)
        return results, probe

    started = time.monotonic()
    results, probe = asyncio.run(scenario())
    assert probe < 0.2, probe
    assert all(isinstance(r, WebhookHostUnresolved) for r in results), results
    assert time.monotonic() - started < BLOCKED / 2  # each given up after 0.3 s, while its lookup still ran


@pytest.mark.usefixtures("slow_dns")
def test_a_delivery_gives_up_a_slow_lookup_in_time() -> None:
    started = time.monotonic()
    with pytest.raises(socket.gaierror):
        bounded_getaddrinfo("w.slowdns.test", 80, 0, socket.SOCK_STREAM)
    assert time.monotonic() - started < BLOCKED / 2  # given up (0.3 s), its lookup still blocked


@pytest.mark.usefixtures("slow_dns")
def test_one_account_s_slow_name_server_does_not_fail_another_account_s_webhook(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An account's deliveries one after another, as its one delivery slot allows, each given up
    while its lookup went on: they held the resolver's four threads, and another account's lookup
    waited behind them, was given up unstarted and counted as a failed attempt (a security review)."""
    monkeypatch.setattr(ssrf, "DNS_TIMEOUT_SECONDS", 0.1)  # four given up, their lookups all still blocked
    for i in range(4):
        attacker = deliver(f"http://w{i}.slowdns.test/hook", {"n": i}, secret=SECRET, allow_private=False,
                           timeout=1.0, max_attempts=1)
        assert not attacker.ok
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(receiver)) as client:
        victim = deliver("https://hooks.example.com/hook", {"job": "victim"}, secret=SECRET, allow_private=False,
                         timeout=1.0, max_attempts=1, client=client)
    assert victim.ok, victim.error
    assert [r.url.host for r in seen] == [PUBLIC]


def test_an_account_whose_lookup_was_given_up_gets_no_second_thread_until_it_ends(slow_dns: SlowDNS) -> None:
    with pytest.raises(socket.gaierror):
        bounded_getaddrinfo("w1.slowdns.test", 80, 0, socket.SOCK_STREAM, owner="acct_attacker")
    started = time.monotonic()
    with pytest.raises(socket.gaierror):
        bounded_getaddrinfo("w2.slowdns.test", 80, 0, socket.SOCK_STREAM, owner="acct_attacker")
    assert "w2.slowdns.test" not in slow_dns.looked_up  # refused without a second thread looking it up...
    assert time.monotonic() - started < ssrf.DNS_TIMEOUT_SECONDS  # ...and without waiting out a lookup's timeout
    assert bounded_getaddrinfo("hooks.example.com", 443, 0, socket.SOCK_STREAM, owner="acct_victim")
    _until_its_lookup_ends(slow_dns, "acct_attacker")  # then its next one runs again
    with pytest.raises(socket.gaierror, match="within"):
        bounded_getaddrinfo("w3.slowdns.test", 80, 0, socket.SOCK_STREAM, owner="acct_attacker")


def test_a_concurrent_lookup_ending_does_not_clear_a_given_up_one_s_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two lookups of one account at once: the fast one ends after the slow one was given up, and
    must not clear the slow one's mark (every end used to): the account would get a second thread
    while its first is still held (a review)."""
    monkeypatch.setattr(ssrf, "DNS_TIMEOUT_SECONDS", 2.0)
    release, slow_given_up = threading.Event(), threading.Event()
    slow_running: list[str] = []

    def lookup(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host.startswith("slow"):
            slow_running.append(host)
            release.wait(10)
            raise socket.gaierror("gave up")
        assert slow_given_up.wait(5)  # ends after the slow one was given up, within its own 2 s
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port))]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    given_up: list[BaseException] = []

    def slow() -> None:
        try:
            bounded_getaddrinfo("slow1.test", 80, owner="acct_a")
        except socket.gaierror as exc:
            given_up.append(exc)
            slow_given_up.set()

    first = threading.Thread(target=slow)
    first.start()
    until(lambda: slow_running, seconds=5)  # the slow lookup under way...
    time.sleep(1.0)  # ...half its 2 s: the fast one starts 1 s before it is given up, and ends 1 s inside its own
    try:
        assert bounded_getaddrinfo("fast.test", 80, owner="acct_a")
        first.join(5)
        assert given_up and ssrf.lookup_pending("acct_a")
        with pytest.raises(socket.gaierror, match="still waits"):
            bounded_getaddrinfo("slow2.test", 80, owner="acct_a")
        assert slow_running == ["slow1.test"]  # one thread for the account, never two
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while ssrf.lookup_pending("acct_a") and time.monotonic() < deadline:  # the slow lookup ends: the mark goes
        time.sleep(0.01)
    assert not ssrf.lookup_pending("acct_a")


@pytest.mark.usefixtures("slow_dns")
def test_one_account_s_slow_name_server_does_not_leave_another_account_s_submission_unchecked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At submission the lookups ran on a pool of four threads: one account's slow lookups held
    them, and another account's check waited in the queue, was given up unstarted, and its job
    was accepted with a webhook host never looked up (a private address found only at delivery).
    Now each lookup has a thread of its own, and an account whose lookup was given up waits for it
    to end before it gets another."""
    real = socket.getaddrinfo

    def lookup(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "intranet.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)

    async def scenario() -> tuple[list[BaseException | None], BaseException | None, float, BaseException | None]:
        slow = [asyncio.create_task(check_url_in_time(f"http://w{i}.slowdns.test/hook", False, owner="acct_slow"))
                for i in range(8)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        try:
            await check_url_in_time("https://intranet.example.com/hook", False, owner="acct_other")
            other: BaseException | None = None
        except WebhookURLRefused as exc:
            other = exc
        took = time.monotonic() - started
        results = await asyncio.gather(*slow, return_exceptions=True)
        try:  # the slow account's lookups were given up and still run: its next is refused at once
            await check_url_in_time("http://again.slowdns.test/hook", False, owner="acct_slow")
            again: BaseException | None = None
        except WebhookURLRefused as exc:
            again = exc
        return results, other, took, again

    results, other, took, again = asyncio.run(scenario())
    assert isinstance(other, NonPublicAddress), other  # looked up, and refused: not given up unstarted
    assert took < 0.2, took
    assert all(isinstance(r, WebhookHostUnresolved) and "within" in str(r) for r in results), results
    assert isinstance(again, WebhookHostUnresolved) and "not looked up" in str(again), again


def test_a_submission_cut_off_during_its_lookup_counts_as_a_lookup_given_up(slow_dns: SlowDNS) -> None:
    """A client that leaves while its webhook host is looked up leaves the lookup's thread busy:
    the account gets no other until it ends, as when the lookup is given up (else leaving at once,
    again and again, would take a thread each time)."""
    async def scenario() -> bool:
        lookup = asyncio.create_task(check_url_in_time("http://w.slowdns.test/hook", False, owner="acct_leaver"))
        await asyncio.sleep(0.05)
        lookup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lookup
        return ssrf.lookup_pending("acct_leaver")

    assert asyncio.run(scenario())
    _until_its_lookup_ends(slow_dns, "acct_leaver")  # the account's mark goes with it


def _until_its_lookup_ends(slow_dns: SlowDNS, owner: str) -> None:
    """Let the slow lookups end; their threads then clear the account's mark, as soon as the
    machine runs them (waited for, bounded). Slow names block again afterwards."""
    assert ssrf.lookup_pending(owner)  # (still marked while its lookup is blocked)
    slow_dns.release.set()
    until(lambda: not ssrf.lookup_pending(owner), f"{owner}'s lookup mark stayed", seconds=5)
    until(lambda: slow_dns.running == 0, "a slow lookup's thread never ended", seconds=5)
    slow_dns.release.clear()
