"""Deliver one signed webhook (Standard Webhooks headers), with retries and the SSRF guard.

Every attempt re-runs the SSRF check and connects to an address that check just vetted: the
request goes to `scheme://<vetted-ip>:port/...` with the original `Host` header and, for https,
the original name as TLS SNI (httpx's `sni_hostname` extension), so the certificate is still
verified against the name. Retries rotate through the vetted addresses.
Redirects are never followed: a 3xx is a failure that no retry mends (the spec's advice is to fix
the URL). Retried: connection errors, timeouts, 408, 429 and 5xx, with exponential backoff
(a `Retry-After` in seconds is honoured up to `MAX_DELAY_SECONDS`). Anything else stops.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from common.ssrf import (
    NonPublicAddress,
    Resolver,
    WebhookHostUnresolved,
    WebhookURLRefused,
    bounded_getaddrinfo,
    check_url,
    parse_url,
)
from common.webhook_signing import sign

MAX_DELAY_SECONDS = 60.0
USER_AGENT = "Helyx-Webhooks/1"


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    attempts: int  # tries made, DNS and connection failures included; 0 if refused before the first
    status: int | None  # the last HTTP status received, if any
    error: str | None
    webhook_id: str
    final: bool = False  # a failure no retry can mend (a refused URL, a 3xx or 4xx other than 408/429)
    retry_after: float | None = None  # seconds the receiver asked for (Retry-After), if it did


def new_webhook_id() -> str:
    return "msg_" + secrets.token_hex(16)


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Compact JSON: the exact bytes that are signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def deliver(
    url: str,
    payload: dict[str, Any],
    *,
    secret: bytes | str,
    allow_private: bool,
    timeout: float,
    max_attempts: int,
    backoff: float = 1.0,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    webhook_id: str | None = None,
    resolver: Resolver = bounded_getaddrinfo,
    clock: Callable[[], float] = time.time,
    earlier_attempts: int = 0,
) -> DeliveryResult:
    """POST `payload` to `url` until a 2xx, a final failure, or `max_attempts` tries.
    `earlier_attempts`: how many tries of this delivery were made before (by earlier calls), so the
    rotation through the vetted addresses goes on where it stood.

    `webhook_id` stays the same on every attempt (receivers deduplicate on it); pass a stable id,
    e.g. derived from the job, so that a delivery resumed after a restart keeps it too. Each
    attempt gets a fresh `webhook-timestamp` and signature. Delivery failures are reported in the
    result, never raised; only a malformed `secret`, `webhook_id` or `max_attempts` raises `ValueError`.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    msg_id = webhook_id or new_webhook_id()
    body = encode_payload(payload)
    sign(secret, msg_id, 0, body)  # fail fast on a malformed secret or id, before any request
    owned = client is None
    # No connection kept between attempts: each connects anew, so its deadline knows its socket.
    http = client or httpx.Client(trust_env=False, follow_redirects=False,
                                  limits=httpx.Limits(max_keepalive_connections=0))
    attempts, status, error = 0, None, None
    try:
        for attempt in range(1, max_attempts + 1):
            try:
                addresses = check_url(url, allow_private, resolver)
            except WebhookHostUnresolved as exc:
                attempts, status, error = attempt, None, exc.message
                retry_after = None
            except WebhookURLRefused as exc:  # (the result's error is for the operator's log: it names the address)
                reason = f"{exc.message} ({exc.address})" if isinstance(exc, NonPublicAddress) else exc.message
                return DeliveryResult(False, attempts, status, reason, msg_id, final=True)
            else:
                attempts = attempt
                address = addresses[(earlier_attempts + attempt - 1) % len(addresses)]
                timestamp = int(clock())
                headers = _headers(msg_id, timestamp, sign(secret, msg_id, timestamp, body))
                status, error, retry_after = _attempt(http, url, address, body, headers, timeout)
                if status is not None and 200 <= status < 300:
                    return DeliveryResult(True, attempts, status, None, msg_id)
                if status is not None and not _retryable(status):
                    return DeliveryResult(False, attempts, status, error, msg_id, final=True)
            if attempt < max_attempts:
                sleep(delay_before_retry(backoff, attempt, retry_after))
        return DeliveryResult(False, attempts, status, error, msg_id, retry_after=retry_after)
    finally:
        if owned:
            http.close()


def _attempt(
    http: httpx.Client, url: str, address: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int | None, str | None, float | None]:
    """One POST to the pinned address, within `timeout` in all: (status, error, retry_after). The
    body is never read."""
    original = parse_url(url)
    pinned = original.copy_with(host=address)
    headers = {**headers, "host": original.netloc.decode("ascii")}
    sni = {"sni_hostname": original.raw_host.decode("ascii")} if original.scheme == "https" else {}
    with _Deadline(timeout) as deadline:
        try:
            request = http.build_request(
                "POST", pinned, content=body, headers=headers, timeout=timeout,
                extensions={**sni, "trace": deadline.trace},
            )
            response = http.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            if deadline.expired:
                return None, f"no answer within {timeout:g} s", None
            return None, f"{type(exc).__name__}: {exc}", None
    try:
        status = response.status_code
        error = None if 200 <= status < 300 else f"HTTP {status}"
        return status, error, _retry_after(response.headers.get("retry-after"))
    finally:
        response.close()


class _Deadline:
    """An attempt's limit in all. httpx's timeout bounds each read and write only, so a receiver
    that sends a byte now and then held an attempt, and the worker thread running it, for as long
    as it liked. At the deadline the attempt's socket is shut down, which ends a read under way."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: the socket of each connection the attempt opens."""
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            with self._lock:
                if sock is not None:
                    self._sockets.append(sock)
                if self.expired:
                    _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _headers(msg_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _retry_after(value: str | None) -> float | None:
    """Seconds, as ASCII digits (a header is read as Latin-1, and `float()` refuses the `²` that
    `isdigit()` takes); the HTTP-date form is rare for webhooks: our own backoff then."""
    seconds = value.strip() if value is not None else ""
    return float(seconds) if _SECONDS.fullmatch(seconds) else None


_SECONDS = re.compile(r"[0-9]{1,9}")


def delay_before_retry(backoff: float, attempt: int, retry_after: float | None) -> float:
    """The wait after failed try number `attempt`: exponential, at least what the receiver asked."""
    delay = backoff * 2 ** (attempt - 1)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, MAX_DELAY_SECONDS)
