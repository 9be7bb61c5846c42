"""The request head is bounded (api.http_protocol): uvicorn's httptools parser read headers of
any size (100 lines of 1 MiB each held ~100 MB per connection, then answered 200) and waited for
them for ever (found by a security review). Over a real socket, against a real uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from api import http_protocol
from tests.integration.helpers_processes import free_port
from tests.waiting import until


async def _echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{len(await request.body())} {len(request.headers)}")


async def _slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(1.0)
    return PlainTextResponse("slow done")


@pytest.fixture
def server() -> Iterator[int]:
    with _serving(Starlette(routes=[Route("/", _echo, methods=["GET", "POST"]), Route("/slow", _slow)])) as port:
        yield port


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[int]:
    """`app` served by uvicorn through the bounded protocol, on a free port, for the block."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http="api.http_protocol:BoundedHeadProtocol",
                            log_level="error", log_config=None)
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    try:
        yield port
    finally:
        running.should_exit = True
        thread.join(10)


def _answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection or goes quiet for `timeout`."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused and closed: what the test wants
        sock.sendall(data)


def test_a_request_with_ordinary_headers_and_a_large_body_passes(server: int) -> None:
    body = b"x" * 300_000  # in the same reads as its head: not counted as head
    headers = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 200) for i in range(40))  # ~8 KiB
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: t\r\n" + headers + b"content-length: %d\r\n\r\n" % len(body) + body)
        sock.sendall(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")  # and the next, on the same connection
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\n\r\n300000 42" in answer
    assert answer.count(b"HTTP/1.1 200") == 2


@pytest.mark.parametrize("header", [
    b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1024) for i in range(100)),  # many lines
    b"x-big: " + b"v" * 4 * 1024 * 1024 + b"\r\n",  # one line of 4 MiB
])
def test_a_head_larger_than_the_bound_is_refused_431_and_the_connection_closed(server: int, header: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        _send(sock, b"GET / HTTP/1.1\r\nhost: t\r\n")
        for start in range(0, len(header), 16_384):  # as a client sends it: read by read
            _send(sock, header[start:start + 16_384])
        answer = _answer(sock)
    assert _error(answer, 431) == ("request_header_too_large", "Request headers too large.")


@pytest.mark.parametrize("ending", [b"", b"\r\n"])  # never finished, or whole
@pytest.mark.parametrize("lines", [
    b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1024) for i in range(100)),
    b"a:b\r\n" * 30_000,  # tiny lines: each counted with its ": " and CRLF
])
def test_a_head_over_the_bound_read_at_once_is_refused_431(server: int, lines: bytes, ending: bytes) -> None:
    """All in the read the request began in (one write; a busy server reads late): a whole head of
    ~100 KB was answered 200 (found by a diff review)."""
    with socket.create_connection(("127.0.0.1", server)) as sock:
        _send(sock, b"GET / HTTP/1.1\r\nhost: t\r\n" + lines + ending)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_a_head_just_under_the_bound_passes(server: int) -> None:
    lines = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(60))  # ~61 KB with the rest
    with socket.create_connection(("127.0.0.1", server)) as sock:
        _send(sock, b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n" + lines + b"\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 200")


def test_a_head_that_does_not_arrive_in_time_is_refused_408(server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_protocol, "HEAD_SECONDS", 0.3)
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: t\r\nx-slow: a")  # and then nothing
        started = time.monotonic()
        answer = _answer(sock)
    assert _error(answer, 408, retry=True)[0] == "request_timeout"
    assert time.monotonic() - started < 3


def test_a_connection_that_never_sends_a_byte_is_closed_after_the_head_timeout(
        server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn held it for ever (its keep-alive timeout starts after a response): a client could
    open connections and hold the API's sockets without sending anything."""
    monkeypatch.setattr(http_protocol, "HEAD_SECONDS", 0.3)
    with socket.create_connection(("127.0.0.1", server)) as sock:
        started = time.monotonic()
        assert _answer(sock) == b""  # closed, and nothing said: there was no request to answer
    assert time.monotonic() - started < 3


def test_a_connection_that_sends_its_request_in_time_is_served_after_the_head_timeout(
        server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_protocol, "HEAD_SECONDS", 1.5)
    with socket.create_connection(("127.0.0.1", server)) as sock:
        time.sleep(0.2)  # (well inside the head timeout, however late this thread wakes)
        _send(sock, b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(1.6)  # past the timeout: the first byte came, so the idle time is uvicorn's keep-alive
        _send(sock, b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 200")


def test_a_request_that_is_not_http_is_answered_400_in_the_error_shape(server: int) -> None:
    """uvicorn's own answer was plain text without a request id (a SPEC audit)."""
    with socket.create_connection(("127.0.0.1", server)) as sock:
        _send(sock, b"GARBAGE\r\n\r\n")
        answer = _answer(sock)
    assert _error(answer, 400)[0] == "invalid_http"


def test_a_body_with_bad_chunk_framing_is_answered_400_and_the_connection_closed(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        _send(sock, b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
        answer = _answer(sock)
    assert _error(answer, 400)[0] == "invalid_http"


def _error(answer: bytes, status: int, retry: bool = False) -> tuple[str, str]:
    """(code, message) of a refusal in the API's error shape, after checking its status and headers."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), answer[:300]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/json" and headers["connection"] == "close", headers
    assert headers["x-request-id"].startswith("req_") and int(headers["content-length"]) == len(body), headers
    assert ("x-should-retry" not in headers) if retry else headers["x-should-retry"] == "false", headers
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None, error
    return error["code"], error["message"]


def _chunked(body: bytes, size: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size))


def test_a_chunked_body_with_small_trailers_passes(server: int) -> None:
    body = b"x" * 300_000
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                     + _chunked(body, 1024) + b"0\r\nx-checksum: abc\r\n\r\n")
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\n\r\n300000 " in answer, answer[:300]


def test_a_chunked_bodys_trailers_are_bounded_as_a_head_is(server: int) -> None:
    """httptools keeps a trailer to itself until it is whole: 64 MB of one were read and held (and
    quadratic CPU spent), with no key, past the body limit too (found by a diff review)."""
    trailer = b"x-t: " + b"a" * 4 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server)) as sock:
        _send(sock, b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
        for start in range(0, len(trailer), 16_384):
            _send(sock, trailer[start:start + 16_384])
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_a_pipelined_head_refused_lets_the_response_under_way_finish(
        server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal closed the connection in the middle of the earlier request's response."""
    monkeypatch.setattr(http_protocol, "HEAD_SECONDS", 0.2)
    monkeypatch.setattr(http_protocol, "LINGER_SECONDS", 0.1)  # well before the slow response's end
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\nGET / HTTP/1.1\r\nHo")  # the second never ends
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"slow done"), answer


def test_a_pipelined_body_with_bad_framing_lets_the_earlier_response_come_first_and_whole(
        server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 400 was written at once, ahead of the earlier request's response: a client read it as
    that request's answer (which the server still ran, and charged), and the response itself was
    lost on the closed connection (a diff review)."""
    monkeypatch.setattr(http_protocol, "LINGER_SECONDS", 0.1)  # well before the slow response's end
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n"
                     b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"slow done"), answer
    assert answer.count(b"HTTP/1.1 ") == 1  # and the connection closed after it, the bad request unanswered


def test_a_body_refused_by_the_protocol_carries_the_id_the_apps_request_log_has() -> None:
    """It made an id of its own, which no log line had: the operator could not find the request."""
    from api.middleware import RequestIdMiddleware

    async def reads_body(request: Request) -> PlainTextResponse:
        seen.append(request.scope["state"]["request_id"])
        return PlainTextResponse(str(len(await request.body())))

    seen: list[str] = []
    app = RequestIdMiddleware(Starlette(routes=[Route("/", reads_body, methods=["POST"])]))
    with _serving(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        until(lambda: seen, "the app never had the request", seconds=10)  # it waits for the rest of the body
        _send(sock, b"zz\r\n")
        answer = _answer(sock)
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert seen and f"x-request-id: {seen[0]}" in head, (seen, head)
    assert _error(answer, 400)[0] == "invalid_http"
