"""A webhook host whose name server answers slowly (an attacker's, on purpose) holds only the webhook
resolver's own threads, for at most its timeout: never the API's shared thread pool, which every
route uses, nor a worker thread past the timeout. Before, 42 submissions naming such a host made
another account's GET /credits wait 7.7 s (found by an adversarial review)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.concurrency import run_in_threadpool

from common import ssrf
from common.ssrf import WebhookHostUnresolved, bounded_getaddrinfo, check_url_in_time

SLOW = 1.0


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = socket.getaddrinfo

    def lookup(host: str, *args: Any, **kwargs: Any) -> Any:
        if host.endswith(".slowdns.test"):
            time.sleep(SLOW)
            raise socket.gaierror("gave up")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(ssrf, "DNS_TIMEOUT_SECONDS", 0.3)
    yield
    time.sleep(SLOW)  # the resolver's threads still in a slow lookup: free again for the next test


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
    assert time.monotonic() - started < SLOW  # each given up after 0.3 s, not when its lookup ends


@pytest.mark.usefixtures("slow_dns")
def test_a_delivery_gives_up_a_slow_lookup_in_time() -> None:
    started = time.monotonic()
    with pytest.raises(socket.gaierror):
        bounded_getaddrinfo("w.slowdns.test", 80, 0, socket.SOCK_STREAM)
    assert time.monotonic() - started < 1.0
