"""The SSRF guard for user-supplied URLs (webhooks): only http(s) to public addresses.

`check_url` parses with httpx (the same parser that later sends the request, so the two cannot
disagree about the host), resolves the host, and refuses the URL when ANY resolved address is
not public: loopback, RFC 1918, CGNAT, link-local (cloud metadata at 169.254.169.254), ULA,
unspecified, multicast, reserved and documentation ranges, and IPv6 forms that embed such an IPv4
address (mapped, 6to4, Teredo, NAT64). Well-known internal names are refused before any lookup.
Resolution happens again right before each delivery; the caller then connects to the vetted
address itself, so a DNS answer that changes in between (rebinding) cannot redirect it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from common.errors import InvalidRequest

Resolver = Callable[..., Sequence[tuple[Any, ...]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})
BLOCKED_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal", "metadata.goog"})
BLOCKED_SUFFIXES = (".localhost", ".internal", ".local", ".home.arpa")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# Not yet in every Python's `ipaddress` tables (3.11's predate it): IPv6 documentation, RFC 9637
_NOT_GLOBAL = (_CGNAT, ipaddress.ip_network("3fff::/20"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class WebhookURLRefused(InvalidRequest):
    """The webhook URL is malformed, not http(s), or points at a non-public address."""

    code = "invalid_webhook_url"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="webhook_url")


class NonPublicAddress(WebhookURLRefused):
    """A name that resolves to a non-public address. The address is kept apart (`address`): the
    client is not told it (it would map the operator's network), the operator's log is."""

    def __init__(self, host: str, address: IPAddress) -> None:
        super().__init__(f"webhook_url host {host!r} resolves to a non-public address")
        self.address = address


class WebhookHostUnresolved(WebhookURLRefused):
    """The host did not resolve. At submission a refusal; during delivery a retryable failure."""


DNS_TIMEOUT_SECONDS = 2.0
MAX_LOOKUPS_RUNNING = 64
# Webhook hosts are the users' to choose, so are their name servers: one that answers slowly
# would hold whatever thread waits for it. So each lookup runs on a thread of its own (at most
# MAX_LOOKUPS_RUNNING at once), never on the API's thread pool (shared by every route) nor a
# worker's thread (shared by the media jobs), and its caller gives it up after DNS_TIMEOUT_SECONDS.
# A lookup given up goes on in its thread until the name server (or the libc resolver's own
# timeouts, ~10 s and more) ends it. In a fixed pool those abandoned lookups were the pool: four of
# them (one account's webhooks naming a name server that never answers) and every other account's
# lookup waited in the queue, was given up unstarted (a delivery counted it as a failed attempt; a
# submission accepted its URL unchecked). An owner (the account) whose last lookup was given up
# and still runs gets no other until it ends: one slow name server holds one thread per account,
# never the others' lookups.
_lookups_running = threading.BoundedSemaphore(MAX_LOOKUPS_RUNNING)
_owners_abandoned: dict[str, int] = {}  # owner: its lookups given up and still running
_owners_lock = threading.Lock()


def lookup_pending(owner: str) -> bool:
    """Whether one of `owner`'s lookups was given up and still runs: its next would fail at once."""
    with _owners_lock:
        return owner in _owners_abandoned


def _start_lookup(work: Callable[[], Any], owner: str | None,
                  slot_wait: float) -> tuple[concurrent.futures.Future[Any], Callable[[], bool]]:
    """Run `work` on a lookup thread of its own, waiting at most `slot_wait` seconds for one
    (socket.gaierror when none frees, or while `owner` has a lookup given up and still running).
    Returns its future and `give_up()`, which marks the lookup abandoned and returns True, or
    returns False when it has ended meanwhile (its future then holds the outcome)."""
    if owner is not None and lookup_pending(owner):
        raise socket.gaierror("an earlier lookup of this owner still waits on its name server")
    if not (_lookups_running.acquire(timeout=slot_wait) if slot_wait > 0 else _lookups_running.acquire(False)):
        raise socket.gaierror("too many name lookups under way")
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    abandoned = threading.Event()  # set (under _owners_lock) when the caller gave this lookup up

    def run() -> None:
        outcome: tuple[Any, BaseException | None]
        try:
            outcome = (work(), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            outcome = (None, exc)
        with _owners_lock:
            if outcome[1] is None:
                future.set_result(outcome[0])
            else:
                future.set_exception(outcome[1])
            if owner is not None and abandoned.is_set():  # only its own mark: not another lookup's
                left = _owners_abandoned.pop(owner) - 1
                if left:
                    _owners_abandoned[owner] = left
        _lookups_running.release()

    def give_up() -> bool:
        with _owners_lock:
            if future.done():
                return False
            abandoned.set()
            if owner is not None:
                _owners_abandoned[owner] = _owners_abandoned.get(owner, 0) + 1
            return True

    try:
        threading.Thread(target=run, name="webhook-dns", daemon=True).start()
    except BaseException:
        _lookups_running.release()
        raise
    return future, give_up


def bounded_getaddrinfo(host: str, port: int, family: int = 0, type_: int = 0, *,
                        owner: str | None = None) -> Sequence[tuple[Any, ...]]:
    """socket.getaddrinfo, given up after DNS_TIMEOUT_SECONDS in all (socket.gaierror: a host that
    does not resolve). `owner`: whose lookup it is (an account id); while one of its lookups that
    was given up still runs, its next ones fail at once instead of taking another thread."""
    deadline = time.monotonic() + DNS_TIMEOUT_SECONDS
    future, give_up = _start_lookup(lambda: socket.getaddrinfo(host, port, family, type_), owner,
                                    DNS_TIMEOUT_SECONDS)
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except concurrent.futures.TimeoutError:
        if give_up():
            raise socket.gaierror(f"no answer from the name server within {DNS_TIMEOUT_SECONDS:g} s") from None
        return future.result()  # it ended as it was given up


async def check_url_in_time(url: str, allow_private: bool, owner: str | None = None) -> None:
    """check_url for the event loop, on a lookup thread of its own (`bounded_getaddrinfo`'s rules,
    `owner` included): WebhookHostUnresolved when the name server has not answered within
    DNS_TIMEOUT_SECONDS, or no lookup thread is free at once."""
    try:
        future, give_up = _start_lookup(lambda: check_url(url, allow_private, socket.getaddrinfo), owner, 0.0)
    except socket.gaierror as exc:
        raise WebhookHostUnresolved(f"webhook_url host was not looked up ({exc})") from None
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(ended.set)

    future.add_done_callback(wake)
    try:
        await asyncio.wait_for(ended.wait(), DNS_TIMEOUT_SECONDS)
    except TimeoutError:
        if give_up():
            raise WebhookHostUnresolved(
                f"webhook_url host did not resolve within {DNS_TIMEOUT_SECONDS:g} s") from None
    except asyncio.CancelledError:  # the client left: its lookup still holds a thread, as one given up does
        give_up()
        raise
    future.result()


def check_url(url: str, allow_private: bool, resolver: Resolver = bounded_getaddrinfo) -> list[str]:
    """Validate `url` and return the host's resolved IP addresses (deduplicated, in order).

    With `allow_private` only the scheme and the URL's shape are checked (for local development
    and tests). Raises `WebhookURLRefused` (or its subclass `WebhookHostUnresolved`).
    """
    parsed, host = _checked_shape(url, allow_private)
    addresses = _resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80), resolver)
    if not allow_private:
        for address in addresses:
            if not is_public_address(address):
                raise NonPublicAddress(host, address)
    return [str(address) for address in addresses]


def check_url_shape(url: str, allow_private: bool) -> None:
    """check_url without the name lookup: the URL's shape, an internal name, a non-public address
    written as such. Cheap enough to run before a request is counted against its rate limit."""
    _checked_shape(url, allow_private)


def _checked_shape(url: str, allow_private: bool) -> tuple[httpx.URL, str]:
    parsed = parse_url(url)
    host = parsed.raw_host.decode("ascii").rstrip(".").lower()
    if not allow_private:
        if _is_blocked_name(host):
            raise WebhookURLRefused(f"webhook_url host {host!r} is internal")
        literal = _parse_ip(host) or _legacy_ipv4(host)
        if literal is not None and not is_public_address(literal):
            raise WebhookURLRefused(f"webhook_url points at a non-public address ({literal})")
    return parsed, host


def parse_url(url: str) -> httpx.URL:
    """The URL parsed as httpx will send it, or `WebhookURLRefused` for anything odd."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise WebhookURLRefused("webhook_url must be a URL of at most 2048 characters")
    if "\\" in url or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise WebhookURLRefused("webhook_url contains whitespace, control characters or backslashes")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
        raise WebhookURLRefused(f"webhook_url is not a valid URL: {exc}") from exc
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise WebhookURLRefused("webhook_url must use http or https")
    if not parsed.raw_host:
        raise WebhookURLRefused("webhook_url has no host")
    host = parsed.raw_host.decode("ascii", "replace")
    if _parse_ip(host) is None and not _HOST_NAME.fullmatch(host.removesuffix(".")):
        # never a name any server has: a 400 now, not a job whose every delivery fails
        raise WebhookURLRefused(f"webhook_url host {host[:100]!r} is not a valid host name")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise WebhookURLRefused("webhook_url has an invalid port")
    return parsed


# A DNS host name as IDNA leaves it: dot-separated labels of 1 to 63 letters, digits, hyphens (not
# first or last) and underscores (some real names have them), 253 characters in all
_HOST_NAME = re.compile(r"(?=.{1,253}\Z)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                        r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def is_public_address(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses, looking inside IPv6 embeddings."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
    if any(address in network for network in _NOT_GLOBAL if network.version == address.version):
        return False
    flags = (
        address.is_loopback,
        address.is_private,
        address.is_link_local,
        address.is_unspecified,
        address.is_multicast,
        address.is_reserved,
        isinstance(address, ipaddress.IPv6Address) and address.is_site_local,
    )
    return address.is_global and not any(flags)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _is_blocked_name(host: str) -> bool:
    return host in BLOCKED_NAMES or host.endswith(BLOCKED_SUFFIXES)


def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    literal = _parse_ip(host)
    if literal is not None:
        return [literal]
    try:
        infos = resolver(host, port, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        raise WebhookHostUnresolved(f"webhook_url host {host!r} does not resolve") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        address = _parse_ip(str(info[4][0]))
        if address is None:
            raise WebhookURLRefused(f"webhook_url host {host!r} resolved to an unusable address")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise WebhookHostUnresolved(f"webhook_url host {host!r} does not resolve")
    return addresses


_LEGACY_IPV4 = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}")


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in a spelling the resolver reads as one (`2130706433`, `0x7f.1`, `127.1`),
    which ipaddress does not: found before any lookup, as a dotted quad is."""
    if not _LEGACY_IPV4.fullmatch(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
