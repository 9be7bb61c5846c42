"""The pooled HTTP client and the one place where HTTP failures become our errors.

Every adapter talks to its vendor through `build_http_client`'s client and maps failures with
`upstream_errors(...)` (transport exceptions; common.providers.error_blocks) and
`raise_for_status(...)` (HTTP statuses):

    connect error / connect timeout     UpstreamError  retryable  code upstream_unreachable
    read / write timeout                UpstreamTimeout (504; the API does not retry it)
    pool timeout (nothing was sent)     UpstreamError  retryable  code upstream_unreachable
    connection broken mid-response      UpstreamError  retryable
    408, 409, 429, 5xx                  UpstreamHTTPError retryable, with the upstream Retry-After
    429 saying the account is out of    UpstreamHTTPError not retryable, code upstream_quota_exhausted
      quota or credit (out_of_quota)
    401, 403                            UpstreamError  not retryable, code upstream_auth
    413, a context too long, ...        UpstreamRejectedRequest (a 400 to the client, the vendor's code and param;
                                        `client_fault` says which refusals are the client's to mend)
    other 4xx                           UpstreamError  not retryable (502)

The vendor's own error message is quoted (trimmed, with the provider key masked) when it is about
the request (a 4xx such as 400 or 404); not for 401/403, whose vendor text often echoes a fragment
of the key and is no use to our client, nor for 429 and 5xx, whose text names the operator's
organisation, project or quota (logged for the operator instead).
"""

from __future__ import annotations

import functools
import http.cookiejar
import logging
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson

from common.errors import UpstreamError, UpstreamRejectedRequest, UpstreamTimeout
from common.providers.aiohttp_transport import DirectAiohttpTransport
from common.providers.refusal_text import about_the_request
from common.providers.vendor_bodies import (
    google_retry_delay,
    out_of_quota,
    retry_after_seconds,
    vendor_code_and_param,
    vendor_message,
)
from common.throttled_log import ThrottledWarnings

log = logging.getLogger("helyx.upstream")



class UpstreamHTTPError(UpstreamError):
    """An upstream error status; `retry_after` is the upstream's Retry-After in seconds, if any."""

    def __init__(self, message: str, *, retryable: bool, upstream_status: int,
                 code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, retryable=retryable, upstream_status=upstream_status, code=code)
        self.retry_after = retry_after


class UpstreamClient(httpx.AsyncClient):
    """The shared client, with a short path for the chat adapters' JSON requests.

    `post_json` and `stream_json` hand a ready request straight to the transport, past the client
    layer: its cookie jar (never wanted here: one client serves every tenant), auth and redirect
    handling, and URL and header merging cost ~110 us of the ~290 us of CPU a chat call took
    (measured against the fake upstream, same run: 285-311 -> 172-201 us). The request is the one
    the client would build: its default headers and timeouts, no redirects followed. Transport
    errors are the same httpx exceptions, so `upstream_errors` maps them as before.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._json_headers = {**dict(self.headers), "content-type": "application/json"}
        self._extensions = {"timeout": self.timeout.as_dict()}

    def _refuse_if_closed(self) -> None:
        """As httpx's own send: a closed client must not open a new session."""
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")

    def _json_request(self, url: httpx.URL | str, body: Any, headers: dict[str, str],
                      params: dict[str, str] | None) -> httpx.Request:
        """`headers` in lower case (they are merged as a plain dict)."""
        self._refuse_if_closed()
        return httpx.Request("POST", url, params=params, headers={**self._json_headers, **headers},
                             content=orjson.dumps(body), extensions=self._extensions)

    async def post_json(self, url: httpx.URL | str, body: Any, headers: dict[str, str]) -> httpx.Response:
        """POST `body` as JSON; the response is read whole and closed. On the aiohttp transport
        (always, outside unit tests) the request goes straight to its session."""
        if isinstance(self._transport, DirectAiohttpTransport):
            self._refuse_if_closed()
            return await self._transport.post(str(url), {**self._json_headers, **headers}, orjson.dumps(body),
                                              self._extensions["timeout"])
        response = await self._transport.handle_async_request(self._json_request(url, body, headers, None))
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    @asynccontextmanager
    async def stream_json(self, url: httpx.URL | str, body: Any, headers: dict[str, str],
                          params: dict[str, str] | None = None) -> AsyncIterator[httpx.Response]:
        """POST `body` as JSON; the response is read as it arrives and closed on leaving."""
        response = await self._transport.handle_async_request(self._json_request(url, body, headers, params))
        try:
            yield response
        finally:
            await response.aclose()


def build_http_client(connect_timeout: float, read_timeout: float, max_connections: int = 200) -> UpstreamClient:
    """The one shared client: explicit timeouts, a bounded pool, no proxies from the environment.

    `read_timeout` bounds the wait for each chunk (so also the gap between streamed chunks) and
    the wait for a free pooled connection. The adapters speak httpx; the connections are aiohttp's
    (httpx-aiohttp's transport): httpcore's pool walks every pooled connection on each request and
    response, and aiohttp's connector does the same work at a fraction of the CPU (measured in
    bench/upstream_client.py). The session is made inside the first request's event loop.
    """
    timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout,
                            pool=read_timeout)

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30.0, ssl=tls_context())
        return aiohttp.ClientSession(connector=connector, trust_env=False)

    transport = DirectAiohttpTransport(client=session, trust_env=False, verify=tls_context())
    return UpstreamClient(timeout=timeout, transport=transport, trust_env=False, follow_redirects=False,
                          headers={"user-agent": "helyx-gateway"}, cookies=NoCookies())


class NoCookies(http.cookiejar.CookieJar):
    """A jar that keeps nothing: one client serves every tenant, so a cookie one upstream answer
    set must not ride along on the next tenant's request (the media adapters use the client's own
    path, which would otherwise keep them)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process, shared by every client: building one loads the CA
    bundle (~20 ms of CPU and several MB). An SSLContext may be shared across threads and loops."""
    return httpx.create_ssl_context(trust_env=False)


def transport_error(exc: httpx.HTTPError, provider: str) -> UpstreamError:
    if _broken_after_connect(exc):
        return UpstreamError(f"The connection to the upstream provider ({provider}) broke "
                             f"({type(exc.__cause__).__name__})", retryable=True)
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        _warnings.warning(f"{provider} connect", "upstream %s: could not connect (%s)", provider,
                          exc or type(exc).__name__)
        return UpstreamError(f"Could not connect to the upstream provider ({provider})",
                             retryable=True, code="upstream_unreachable")
    if isinstance(exc, httpx.PoolTimeout):  # nothing was sent: our connections to it were all busy
        return UpstreamError(f"No free connection to the upstream provider ({provider}) in time",
                             retryable=True, code="upstream_unreachable")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"The upstream provider ({provider}) did not answer in time")
    if isinstance(exc, httpx.TransportError):
        return UpstreamError(f"The connection to the upstream provider ({provider}) broke "
                             f"({type(exc).__name__})", retryable=True)
    return UpstreamError(f"Unusable response from the upstream provider ({provider}) "
                         f"({type(exc).__name__})")


def _broken_after_connect(exc: httpx.HTTPError) -> bool:
    """httpx-aiohttp reports every aiohttp connection error as httpx.ConnectTimeout, a server
    that hung up mid-response included; only a failure to connect is one."""
    cause = exc.__cause__
    return (isinstance(cause, aiohttp.ClientConnectionError)
            and not isinstance(cause, aiohttp.ClientConnectorError | TimeoutError))


async def raise_for_status(response: httpx.Response, provider: str, api_key: str | None) -> None:
    """Raise the mapped UpstreamError if `response` is an error status (reads its body)."""
    if response.status_code < 400:
        return
    body = await response.aread()
    raise status_error(response.status_code, body, response.headers, provider, api_key)


# What a vendor says when it refuses the request itself, the client's to mend: a 400 to the client
# as OpenAI answers it. Any other 4xx stays a 502: it may be the operator's (a model name the
# catalog got wrong, a parameter the model does not take that the adapter sent, the provider
# account's credit), and the client could do nothing about it.
_CLIENT_FAULT_CODES = frozenset({"context_length_exceeded", "string_above_max_length", "content_policy_violation",
                                 "invalid_image", "invalid_image_url"})
# The codes a refusal carries that Helyx itself chose (any other is a vendor's, passed on as it came).
KNOWN_REFUSAL_CODES = _CLIENT_FAULT_CODES | {"request_too_large", "content_filtered"}
_TOO_LONG = re.compile(r"prompt is too long|input token count.*exceeds|maximum context length", re.IGNORECASE)
_warnings = ThrottledWarnings(log)


def client_fault(status: int, body: bytes, vendor: str) -> tuple[str | None, str | None] | None:
    """The (code, param) of a refusal that is the client's to mend, or None: a body too large, a
    context too long (OpenAI-compatible vendors say so by code, Anthropic and Gemini in words), or
    one whose `param` names a part of the conversation (an image part for a model without vision).
    Other refusals may be the operator's (a field the adapter sends, a model name the catalog has
    wrong): a 502."""
    if status == 413:
        return "request_too_large", None
    code, param = vendor_code_and_param(body)
    if code in _CLIENT_FAULT_CODES:
        return code, param or ("messages" if code == "context_length_exceeded" else None)
    if _TOO_LONG.search(vendor):
        return "context_length_exceeded", "messages"
    if param is not None and param.startswith("messages") and about_the_request(status, vendor):
        return code, param
    return None


def status_error(status: int, body: bytes, headers: httpx.Headers | dict[str, str], provider: str,
                 api_key: str | None) -> UpstreamError:
    vendor = vendor_message(body, api_key)
    if status in (400, 413, 422) and (fault := client_fault(status, body, vendor)) is not None:
        # logged too: a refusal blamed on the request may be the catalog's to mend (`vision`, unsent_fields)
        _warnings.warning(f"{provider} {status}", "upstream %s refused a request (HTTP %d): %s", provider, status,
                          vendor or "no message")
        message = f"The upstream provider ({provider}) refused the request (HTTP {status})"
        return UpstreamRejectedRequest(message + (f": {vendor}" if vendor else ""), upstream_status=status,
                                       code=fault[0], param=fault[1])
    if status in (401, 403):  # the operator's to fix, and nothing else says so: the client sees a 502
        _warnings.warning(f"{provider} auth", "upstream %s rejected the gateway's provider key (HTTP %d): %s",
                          provider, status, vendor or "no message")
        return UpstreamHTTPError(
            f"The upstream provider ({provider}) rejected the gateway's provider credentials "
            f"(HTTP {status}); the gateway operator must fix the provider key",
            retryable=False, upstream_status=status, code="upstream_auth")
    if status == 429 and out_of_quota(body):  # billing, not a rate: no retry brings it back
        _warnings.warning(f"{provider} quota", "upstream %s: the gateway's provider account is out of quota or "
                          "credit (HTTP 429): %s", provider, vendor or "no message")
        return UpstreamHTTPError(
            f"The upstream provider ({provider}) refused the call: the gateway's account with it is out of quota "
            "or credit; the gateway operator must fix it", retryable=False, upstream_status=status,
            code="upstream_quota_exhausted")
    retryable = status in (408, 409, 429) or status >= 500
    message = f"The upstream provider ({provider}) answered HTTP {status}"
    if vendor and not retryable and about_the_request(status, vendor):  # quoted, and logged
        message += f": {vendor}"
        _warnings.warning(f"{provider} {status}", "upstream %s refused a request (HTTP %d): %s", provider, status,
                          vendor)
    elif vendor:  # about the operator's account or set-up (its organisation, credit, quota): its log only
        message += "; the reason is in the gateway operator's log" if not retryable else ""
        _warnings.warning(f"{provider} {status}", "upstream %s answered HTTP %d: %s", provider, status, vendor)
    code = "upstream_rate_limited" if status == 429 else None
    retry_after = None
    if retryable:
        retry_after = retry_after_seconds(headers)
        retry_after = google_retry_delay(body) if retry_after is None else retry_after
    return UpstreamHTTPError(message, retryable=retryable, upstream_status=status, code=code,
                             retry_after=retry_after)


def failure_in_body(provider: str, vendor: str, *, retryable: bool) -> UpstreamError:
    """A failure the vendor reported inside a 200 body or a stream: its text reaches the client
    only when it is about the request (not retryable), as status_error has it; else the log."""
    if retryable or not vendor or not about_the_request(400, vendor):
        if vendor:
            log.warning("upstream %s failed: %s", provider, vendor)
        return UpstreamError(f"The upstream provider ({provider}) failed", retryable=retryable)
    return UpstreamError(f"The upstream provider ({provider}) failed: {vendor}", retryable=False)


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str | None
    data: str


_SSE_FIELDS = frozenset({"event", "data", "id", "retry"})
_LINE_END = re.compile(r"\r\n|\r|\n")


async def sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The body's lines as SSE ends them: CRLF, CR or LF only. httpx's aiter_lines splits on
    everything str.splitlines does, U+2028, U+2029 and U+0085 too, which JSON carries raw inside
    strings (serde, pydantic and Node servers send them so): a chunk holding one was cut in two,
    and its halves read as malformed JSON (a review found it). A BOM before the first line made
    that line no field, and a stream's first event was lost."""
    response.encoding = "utf-8-sig"  # SSE is UTF-8 whatever the header says, a leading BOM skipped (WHATWG)
    pieces: list[str] = []  # the line begun: joined once it ends (a long line in many reads stays linear)
    async for text in response.aiter_text():
        if "\n" not in text and "\r" not in text:
            pieces.append(text)
            continue
        pending = "".join(pieces) + text
        held = "\r" if pending.endswith("\r") else ""  # perhaps the first half of a CRLF
        lines = _LINE_END.split(pending[:-1] if held else pending)
        pieces = [lines.pop() + held]
        for line in lines:
            yield line
    if pending := "".join(pieces):
        lines = _LINE_END.split(pending)
        if lines[-1] == "":
            lines.pop()
        for line in lines:
            yield line


MAX_STRAY_CHARS = 65_536


async def iter_sse(response: httpx.Response, stray: list[str] | None = None) -> AsyncIterator[SSEEvent]:
    """Server-sent events from a streaming response (the `event:` and `data:` fields). Lines that
    are no SSE field (a JSON body sent instead of events: MiniMax's failures) are skipped, as SSE
    has it, and kept in `stray` when given, up to MAX_STRAY_CHARS in all."""
    event: str | None = None
    data: list[str] = []
    kept = 0
    async for line in sse_lines(response):
        if not line:
            if data:
                yield SSEEvent(event, "\n".join(data))
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif stray is not None and name not in _SSE_FIELDS and kept + len(line) <= MAX_STRAY_CHARS:
            stray.append(line)
            kept += len(line)
    if data:
        yield SSEEvent(event, "\n".join(data))
