"""uvicorn's httptools protocol with bounds on a request's head (its request line and headers).

httptools sets none: a client could send headers of any size (100 lines of 1 MiB each were read
and held, ~100 MB of the API's memory per connection, and answered 200), or send them a byte at a
time for ever. h11, uvicorn's other parser, bounds the size (16 KiB) but parses in Python, at a
cost on every request; here the httptools parser stays and the head is bounded around it:

- at most MAX_HEAD_BYTES: the request line and headers are added up as the parser hands them over
  (each header with its ": " and CRLF), so a head over the bound is refused in whatever reads it
  came; and, as httptools keeps a header to itself until it is whole, the reads that leave a head
  unfinished are added up too (not the read its request began in, which may end a previous body:
  a connection holds at most one read, up to 256 KiB with uvloop, beyond the bound). Past it, 431
  and the connection closed (what the client still sends meanwhile is read and dropped);
- at most HEAD_SECONDS from the first read that left a request's head incomplete to its last
  header: past it, 408 and closed (a head read whole, as most are, sets no timer); and at most
  HEAD_SECONDS from a connection's opening to its first byte: past it, closed (uvicorn times out
  only the idle time after a response);
- a chunked body's framing and trailers (what its reads hold besides the body's bytes) at most
  MAX_HEAD_BYTES too: httptools keeps a trailer to itself until it is whole, as a header.
A head refused while the response to an earlier request of the connection is under way (a
pipelining client) lets that response finish; the connection closes after it.

Bodies are not bounded here: the app's BodyLimitMiddleware refuses a large one (413) as it comes.
Used by `helyx serve` (and the Procfile through it): `uvicorn --http api.http_protocol:BoundedHeadProtocol`.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # nginx's default allows 4 x 8 KiB header lines; browsers send ~1-2 KiB
HEAD_SECONDS = 30.0  # a first byte to the end of the headers (nginx's client_header_timeout is 60 s)
LINGER_SECONDS = 2.0  # a refused connection is closed this long after its answer, as nginx's lingering close


class _HeadTooLarge(Exception):
    """Raised in a parser callback: httptools stops and raises HttpParserError to uvicorn."""


class BoundedHeadProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = self._began = self._refused = self._too_large = self._in_body = False
        self._head_bytes = self._parsed_bytes = self._framing_bytes = self._body_read = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._silent_timer: asyncio.TimerHandle | None = None
        self._earlier: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._silent_timer = self.loop.call_later(HEAD_SECONDS, self._silent_too_long)

    def _silent_too_long(self) -> None:
        """A connection that never sent a byte: closed without an answer (there is no request to
        answer), as nginx's client_header_timeout does; uvicorn would hold it, and its socket, for ever."""
        self._silent_timer = None
        if not self.transport.is_closing():
            self.logger.warning("Connection idle since it opened, closed: %s",
                                f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._silent_timer is not None:
            self._silent_timer.cancel()
            self._silent_timer = None
        if self._refused:  # what still comes is read and dropped, so that the refusal is not lost to a reset
            return
        self._began = False
        in_body, self._body_read = self._in_body, 0
        super().data_received(data)
        if in_body and self._in_body and not self.transport.is_closing():  # a read within one body
            # What the read held besides the body's bytes: a chunked body's framing, or its trailers,
            # which httptools keeps to itself until each is whole (bounded as a head is).
            self._framing_bytes += len(data) - self._body_read
            if self._framing_bytes > MAX_HEAD_BYTES:
                self._refuse(b"431 Request Header Fields Too Large", "Request chunk framing or trailers too large.",
                             "request_header_too_large", own_body=True)
            return
        if self._in_head and not self.transport.is_closing():  # a head still incomplete (rare: most come whole)
            if not self._began:
                self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(b"431 Request Header Fields Too Large", "Request headers too large.",
                             "request_header_too_large")
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(HEAD_SECONDS, self._head_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._began = True
        self._head_bytes = self._parsed_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._parsed_bytes += size
        if self._parsed_bytes > MAX_HEAD_BYTES:
            self._too_large = True
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, which _count raises on purpose: then a 431. Either
        is answered in the API's error shape (uvicorn's own is plain text, without a request id)."""
        if self._too_large:
            self._refuse(b"431 Request Header Fields Too Large", "Request headers too large.",
                         "request_header_too_large")
        else:
            # (uvicorn has logged it, without the id.) In a body (bad chunk framing), that request's own: answered
            # unless its response has begun; in a head, after the response under way, if any.
            self._refuse(b"400 Bad Request", "Invalid HTTP request received: the request is not well-formed HTTP/1.1.",
                         "invalid_http", own_body=self._in_body)

    def on_headers_complete(self) -> None:
        self._end_of_head()
        self._in_body, self._framing_bytes = True, 0
        self._earlier = self.cycle  # the request before this one: pipelined, it may still be answering
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_read += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._silent_timer is not None:
            self._silent_timer.cancel()
            self._silent_timer = None
        self._end_of_head()
        super().connection_lost(exc)

    def _end_of_head(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(b"408 Request Timeout", "Request headers not received in time.", "request_timeout",
                         retry=True)

    def _refuse(self, status: bytes, message: str, code: str, *, own_body: bool = False, retry: bool = False
                ) -> None:
        """Answer and close, LINGER_SECONDS later: a socket closed with unread data sends a reset,
        which can destroy the answer before the client reads it, and the client is usually still
        sending. A head refused while the response to an earlier request of the connection is under
        way (a pipelining client): that response is let finish, and the connection closes after it
        without a word (an answer then would be read as that response's). So too a request's own
        body refused (`own_body`) while it waits behind an earlier response; one already running is
        answered unless its response has begun. The answer is in the API's error shape, with the
        request's own id when the app has given it one, else a new one, logged with the warning
        (SPEC: every error, every response); `retry` (a head too slow) leaves the client's retry
        policy to decide."""
        self._end_of_head()
        self._in_body = False
        self._refused = True
        request_id = self._request_id(own_body)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
        self.logger.warning("%s (%s): %s", message, request_id, client)
        if own_body and self._unstarted(self.cycle):  # waiting behind an earlier response: dropped
            self.pipeline = type(self.pipeline)(entry for entry in self.pipeline if entry[0] is not self.cycle)
            earlier = self._earlier
            if earlier is not None and not earlier.response_complete:
                earlier.keep_alive = False  # uvicorn closes the connection once that response is sent
                return
        elif not own_body and self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        if not (own_body and self.cycle.response_started):
            self.transport.write(_error_answer(status, message, code, retry, request_id,
                                               self.server_state.default_headers))
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _unstarted(self, cycle: Any) -> bool:
        return any(queued is cycle for queued, _ in self.pipeline)

    def _request_id(self, own_body: bool) -> str:
        """The refused request's id, as the app's request log has it (api.middleware sets it in the
        request's scope), when its body is what is refused; else a new one."""
        if own_body and self.cycle is not None:
            given = (self.cycle.scope.get("state") or {}).get("request_id")
            if isinstance(given, str):
                return given
        return "req_" + secrets.token_hex(12)


def _error_answer(status: bytes, message: str, code: str, retry: bool, request_id: str,
                  default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}})
    head = [b"HTTP/1.1 " + status, *(name + b": " + value for name, value in default_headers),
            b"content-type: application/json", b"content-length: " + str(len(body)).encode("ascii"),
            b"x-request-id: " + request_id.encode("ascii"),
            *([] if retry else [b"x-should-retry: false"]), b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body
