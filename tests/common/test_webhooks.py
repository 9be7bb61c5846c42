from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from common.webhook_signing import WebhookVerificationError, generate_secret, verify
from common.webhooks import DeliveryResult, deliver
from tests.common.test_ssrf import resolver_for
from tests.ports import refusing_port

SECRET = generate_secret()
PAYLOAD = {"type": "job.succeeded", "data": {"id": "job_1", "status": "succeeded", "note": "café"}}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that verifies signatures like a customer would."""

    port: int = 0
    script: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], float]:
        try:
            verify(SECRET, body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        self.received.append(Received(path, headers, body, verified))
        if not verified:
            return 401, {}, 0.0
        return self.script.pop(0) if self.script else (200, {}, 0.0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, extra, delay = state.handle(self.path, headers, body)
            time.sleep(delay)
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        do_GET = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def send(url: str, **overrides: Any) -> tuple[DeliveryResult, list[float]]:
    sleeps: list[float] = []
    options: dict[str, Any] = {
        "secret": SECRET,
        "allow_private": True,
        "timeout": 2.0,
        "max_attempts": 3,
        "backoff": 0.5,
        "sleep": sleeps.append,
    }
    return deliver(url, PAYLOAD, **{**options, **overrides}), sleeps


def test_a_delivery_reaches_the_receiver_and_its_signature_verifies(receiver: Receiver) -> None:
    result, sleeps = send(receiver.url)
    assert result == DeliveryResult(True, 1, 200, None, result.webhook_id)
    assert sleeps == []
    [request] = receiver.received
    assert request.verified
    assert request.headers["webhook-id"] == result.webhook_id
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == PAYLOAD


def test_failures_are_retried_with_the_same_webhook_id(receiver: Receiver) -> None:
    receiver.script = [(500, {}, 0.0), (503, {}, 0.0)]
    result, sleeps = send(receiver.url, webhook_id="msg_job_1")
    assert (result.ok, result.attempts, result.status) == (True, 3, 200)
    assert [r.headers["webhook-id"] for r in receiver.received] == ["msg_job_1"] * 3
    assert all(r.verified for r in receiver.received)
    assert sleeps == [0.5, 1.0]


def test_a_redirect_is_a_failure_and_is_not_followed(receiver: Receiver) -> None:
    receiver.script = [(302, {"location": f"http://127.0.0.1:{receiver.port}/elsewhere"}, 0.0)]
    result, _ = send(receiver.url)
    assert (result.ok, result.attempts, result.status) == (False, 1, 302)
    assert [r.path for r in receiver.received] == ["/hook"]


def test_a_client_error_stops_but_429_is_retried_after_the_time_asked(receiver: Receiver) -> None:
    receiver.script = [(429, {"retry-after": "3"}, 0.0), (404, {}, 0.0)]
    result, sleeps = send(receiver.url)
    assert (result.ok, result.attempts, result.status, result.error) == (False, 2, 404, "HTTP 404")
    assert sleeps == [3.0]


@pytest.mark.parametrize("asked", ["\u00b2", "1" * 5_000, "-3", "3.5"])
def test_a_retry_after_that_is_no_number_of_seconds_leaves_the_backoff_ours(receiver: Receiver, asked: str) -> None:
    """`²` (a Latin-1 header byte) passed `isdigit()` and then failed `float()`: the delivery raised,
    its row stayed pending and the sweeper sent it again for ever (a security review)."""
    receiver.script = [(503, {"retry-after": asked}, 0.0), (200, {}, 0.0)]
    result, sleeps = send(receiver.url)
    assert (result.ok, result.attempts) == (True, 2)
    assert sleeps == [0.5]


def test_attempts_stop_at_the_maximum(receiver: Receiver) -> None:
    receiver.script = [(500, {}, 0.0)] * 5
    result, sleeps = send(receiver.url, max_attempts=2)
    assert (result.ok, result.attempts, result.status) == (False, 2, 500)
    assert len(receiver.received) == 2 and sleeps == [0.5]


def test_timeouts_are_retried(receiver: Receiver) -> None:
    receiver.script = [(200, {}, 4.0)]  # the second attempt is answered at once, with 2 s to spare for a busy machine
    result, _ = send(receiver.url, timeout=2.0, max_attempts=2)
    assert (result.ok, result.attempts, result.status) == (True, 2, 200)


def test_a_receiver_that_dribbles_its_answer_is_cut_at_the_timeout_in_all() -> None:
    """httpx's timeout bounds each read: a byte every 0.15 s kept one attempt with a 0.5 s timeout
    (and the worker thread running it) for 5.6 s. The attempt now ends at its timeout in all."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def dribble() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n":
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.15)
            conn.close()

    threading.Thread(target=dribble, daemon=True).start()
    started = time.monotonic()
    result, _ = send(f"http://127.0.0.1:{port}/hook", timeout=0.5, max_attempts=2)
    took = time.monotonic() - started
    server.close()
    assert (result.ok, result.attempts, result.status) == (False, 2, None), result
    assert result.error == "no answer within 0.5 s" and took < 2 * 0.5 + 0.5, (result, took)


def test_connection_errors_are_retried() -> None:
    with refusing_port() as port:
        result, sleeps = send(f"http://127.0.0.1:{port}/hook", max_attempts=3)
    assert (result.ok, result.attempts, result.status) == (False, 3, None)
    assert result.error is not None and "ConnectError" in result.error
    assert sleeps == [0.5, 1.0]


def test_a_private_target_is_refused_before_any_request(receiver: Receiver) -> None:
    result, _ = send(receiver.url, allow_private=False)
    assert (result.ok, result.attempts) == (False, 0)
    assert result.error is not None and "non-public" in result.error
    assert receiver.received == []


def test_the_connection_goes_to_the_vetted_address_under_the_original_name(receiver: Receiver) -> None:
    resolver = resolver_for({"hooks.test": ["127.0.0.1"]})  # a name no real DNS knows
    result, _ = send(f"http://hooks.test:{receiver.port}/hook", resolver=resolver)
    assert result.ok
    assert receiver.received[0].headers["host"] == f"hooks.test:{receiver.port}"


def test_dns_rebinding_between_attempts_is_caught() -> None:
    answers = iter([["93.184.215.14"], ["10.0.0.1"]])
    seen: list[httpx.Request] = []

    def rebinding(host: str, port: int, *_args: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in next(answers)]

    def transport(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503)

    with httpx.Client(transport=httpx.MockTransport(transport)) as client:
        result, _ = send("https://hooks.example.com/x", allow_private=False, resolver=rebinding, client=client)
    assert (result.ok, result.attempts, result.status) == (False, 1, 503)
    assert result.error is not None and "10.0.0.1" in result.error
    [request] = seen
    assert request.url.host == "93.184.215.14" and request.url.scheme == "https"
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"


def test_an_unresolvable_host_is_retried_without_any_request() -> None:
    result, sleeps = send("https://nowhere.example/x", resolver=resolver_for({}))
    assert (result.ok, result.attempts, result.status) == (False, 3, None)
    assert result.error is not None and "does not resolve" in result.error
    assert sleeps == [0.5, 1.0]


def test_a_malformed_secret_raises_before_any_request(receiver: Receiver) -> None:
    with pytest.raises(ValueError):
        send(receiver.url, secret="whsec_***")
    assert receiver.received == []
