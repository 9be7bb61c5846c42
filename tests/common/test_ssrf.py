from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import pytest

from common.errors import InvalidRequest
from common.ssrf import WebhookHostUnresolved, WebhookURLRefused, check_url, check_url_shape


def resolver_for(mapping: dict[str, list[str]]) -> Any:
    """A getaddrinfo stand-in: no DNS traffic in tests."""

    def resolve(host: str, port: int, *_args: Any) -> Sequence[tuple[Any, ...]]:
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in mapping[host]
        ]

    return resolve


def no_dns(*_args: Any) -> Sequence[tuple[Any, ...]]:
    raise AssertionError("an IP literal or a blocked name must not be looked up")


PRIVATE_LITERALS = [
    "http://127.0.0.1/hook",
    "http://127.8.9.10:8080/hook",
    "http://[::1]/hook",
    "http://10.0.0.1/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:169.254.169.254]/hook",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://[::]/hook",
    "http://[fc00::1]/hook",
    "http://[fd12:3456::1]/hook",
    "http://[fe80::1]/hook",
    "http://224.0.0.1/hook",
    "http://[ff02::1]/hook",
    "http://240.0.0.1/hook",
    "http://255.255.255.255/hook",
    "http://192.0.2.1/hook",
    "http://[2001:db8::1]/hook",  # IPv6 documentation
    "http://[3fff::1]/hook",  # IPv6 documentation, RFC 9637 (found by a security review)
    "http://[2002:7f00:1::]/hook",  # 6to4 wrapping 127.0.0.1
    "http://[64:ff9b::a00:1]/hook",  # NAT64 wrapping 10.0.0.1
    "https://127.0.0.1./hook",
]


@pytest.mark.parametrize("url", PRIVATE_LITERALS)
def test_non_public_addresses_are_refused(url: str) -> None:
    with pytest.raises(WebhookURLRefused) as caught:
        check_url(url, allow_private=False, resolver=no_dns)
    assert isinstance(caught.value, InvalidRequest)
    assert caught.value.param == "webhook_url" and caught.value.status == 400


@pytest.mark.parametrize("url", PRIVATE_LITERALS)
def test_non_public_addresses_are_allowed_when_configured(url: str) -> None:
    assert len(check_url(url, allow_private=True, resolver=no_dns)) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./x",
        "http://metadata/x",
        "http://localhost:8000/hook",
        "http://api.localhost/hook",
        "http://printer.local/hook",
        "http://db.corp.internal/hook",
    ],
)
def test_internal_names_are_refused_without_a_lookup(url: str) -> None:
    with pytest.raises(WebhookURLRefused, match="internal"):
        check_url(url, allow_private=False, resolver=no_dns)


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    resolver = resolver_for({"hooks.example.com": ["10.1.2.3"]})
    with pytest.raises(WebhookURLRefused, match="non-public"):
        check_url("https://hooks.example.com/x", allow_private=False, resolver=resolver)


def test_one_private_record_among_public_ones_is_enough_to_refuse() -> None:
    resolver = resolver_for({"hooks.example.com": ["93.184.215.14", "::ffff:127.0.0.1"]})
    with pytest.raises(WebhookURLRefused):
        check_url("https://hooks.example.com/x", allow_private=False, resolver=resolver)


def test_the_integer_form_of_loopback_is_refused_after_resolution() -> None:
    with pytest.raises(WebhookURLRefused, match="non-public"):
        check_url("http://2130706433/hook", allow_private=False)  # getaddrinfo parses it locally


def test_public_names_and_addresses_are_accepted() -> None:
    resolver = resolver_for({"hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07::1"]})
    ips = check_url("https://hooks.example.com/x?y=1", allow_private=False, resolver=resolver)
    assert ips == ["93.184.215.14", "2606:2800:21f:cb07::1"]
    assert check_url("http://8.8.8.8:8080/x", allow_private=False, resolver=no_dns) == ["8.8.8.8"]
    assert check_url("https://[2606:4700::1111]/", allow_private=False, resolver=no_dns) == ["2606:4700::1111"]
    # (as ipaddress spells it: Python 3.13 writes the mapped IPv4 address dotted, earlier versions in hex)
    assert check_url("http://[::ffff:8.8.8.8]/", allow_private=False, resolver=no_dns) == [
        str(ipaddress.ip_address("::ffff:808:808"))]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "example.com/hook",
        "http:///no-host",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http://evil.com\\@127.0.0.1/",
        "http://example.com/\r\nX-Injected: 1",
        "",
    ],
)
def test_malformed_urls_and_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(WebhookURLRefused):
        check_url(url, allow_private=True, resolver=no_dns)


def test_an_unresolvable_host_is_reported_as_such() -> None:
    with pytest.raises(WebhookHostUnresolved):
        check_url("https://nowhere.example/x", allow_private=False, resolver=resolver_for({}))


@pytest.mark.parametrize("host", ["a..com", "-bad-.example", "bad-.example", "a" * 64 + ".com", ".com",
                                  ("a" * 60 + ".") * 5 + "com"])
def test_a_host_that_is_no_valid_name_is_refused_before_any_lookup(host: str) -> None:
    """A fuzz review: such a host was looked up, and as a name that does not resolve (yet) it was
    accepted at submission, each delivery then failing. Now a 400, whatever a resolver says."""
    def resolver(*args: Any) -> Sequence[tuple[Any, ...]]:
        raise AssertionError("looked up")
    with pytest.raises(WebhookURLRefused) as refused:
        check_url(f"https://{host}/hook", allow_private=False, resolver=resolver)
    assert type(refused.value) is WebhookURLRefused and "not a valid host name" in refused.value.message


def test_valid_host_names_of_every_form_are_looked_up() -> None:
    names = ["hooks.example.com", "a" * 63 + ".example", "under_score.example", "xn--bcher-kva.example",
             "trailing.dot.example.", "localhost-like-1.example"]
    resolver = resolver_for({name.rstrip("."): ["93.184.215.14"] for name in names})
    for name in names:
        assert check_url(f"https://{name}/x", allow_private=False, resolver=resolver) == ["93.184.215.14"]
    assert check_url("https://bücher.example/x", allow_private=False,
                     resolver=resolver_for({"xn--bcher-kva.example": ["93.184.215.14"]})) == ["93.184.215.14"]


LEGACY_SPELLINGS = ["http://2130706433/hook", "http://0x7f.1/hook", "http://0x7f000001/hook",
                    "http://017700000001/hook", "http://127.1/hook", "http://0/hook", "http://10.1/hook"]


@pytest.mark.parametrize("url", PRIVATE_LITERALS + LEGACY_SPELLINGS)
def test_the_shape_check_refuses_every_non_public_address_written_as_one_without_a_lookup(url: str) -> None:
    """What the API checks before a request is counted (no lookup): a non-public address in any
    spelling the resolver would read as one (a review: `127.1` and `2130706433` passed until the
    lookup, after the count)."""
    with pytest.raises(WebhookURLRefused):
        check_url_shape(url, allow_private=False)
    check_url_shape(url, allow_private=True)


def test_public_addresses_in_legacy_spellings_and_look_alike_names_pass_the_shape_check() -> None:
    for url in ("http://134744072/x", "http://8.8.8.8/x", "http://1.2.3.4.5/x", "http://123abc.com/x",
                "https://hooks.example.com/x"):
        check_url_shape(url, allow_private=False)
