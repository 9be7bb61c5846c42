"""A bad key is refused before the body's fields are judged, on the chat route too, whose key is
looked up in the route itself (api.deps.key_checked_in_route, api.errors)."""

from __future__ import annotations

import pytest

from common import keys
from tests.api.chat.helpers import GatewayFactory


@pytest.mark.parametrize("on", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_bad_key_is_refused_before_a_bad_body_and_a_good_key_gets_the_400(
        make_gateway: GatewayFactory, on: str, request: pytest.FixtureRequest) -> None:
    gateway = make_gateway(**({"database_url": request.getfixturevalue("pg_url")} if on == "postgres" else {}))
    account = gateway.account("free")
    bad_body = {"model": "gpt-4o", "messages": "not a list"}
    with gateway.http(keys.generate_key()) as stranger, gateway.http(account) as known, gateway.http() as nobody:
        assert stranger.post("/chat/completions", json=bad_body).json()["error"]["code"] == "invalid_api_key"
        assert nobody.post("/chat/completions", json=bad_body).json()["error"]["code"] == "missing_api_key"
        answer = known.post("/chat/completions", json=bad_body)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "messages", answer.text


def test_a_missing_or_malformed_key_is_refused_before_the_body_is_validated(
        make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4 MiB body of content parts took ~0.5 s of the event loop to validate before its 401: a
    few anonymous clients stalled every route (found by a security review)."""
    from api.routes import chat

    ran: list[object] = []
    monkeypatch.setattr(chat, "create_completion", lambda *args: ran.append(args))
    gateway = make_gateway()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 512}] * 8}
    malformed = "hx-" + "A" * 43  # the checksum fails: refused with no lookup
    with gateway.http(malformed) as wrong, gateway.http() as nobody:
        assert wrong.post("/chat/completions", json=body).json()["error"]["code"] == "invalid_api_key"
        assert nobody.post("/chat/completions", json=body).json()["error"]["code"] == "missing_api_key"
    assert ran == []  # the body never reached the route: it was not validated either


@pytest.mark.parametrize("on", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_large_bodys_well_formed_key_is_looked_up_before_the_body_is_validated(
        make_gateway: GatewayFactory, on: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checksum is no secret: anyone can make a well-formed key, and had the loop validate
    4 MiB of content parts for each 401 (~0.5 s, ~50 MB; found by a security review). A small
    body keeps the one-statement path: its key is looked up in the route."""
    from api import errors

    validated: list[object] = []
    real = errors._key_refusal

    async def seen(req: object) -> object:  # reached only after the body failed validation
        validated.append(req)
        return await real(req)  # type: ignore[arg-type]

    monkeypatch.setattr(errors, "_key_refusal", seen)
    gateway = make_gateway(**({"database_url": request.getfixturevalue("pg_url")} if on == "postgres" else {}))
    account = gateway.account("free")
    parts = [{"type": "text", "text": "a" * 200}] * 500 + [{"type": "bogus"}]  # ~115 KB
    large = {"model": "gpt-4o", "messages": [{"role": "user", "content": parts}]}
    small = {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "bogus"}]}]}
    with gateway.http(keys.generate_key()) as stranger, gateway.http(account) as known:
        assert stranger.post("/chat/completions", json=large).json()["error"]["code"] == "invalid_api_key"
        assert validated == []  # refused before its parts were judged
        assert stranger.post("/chat/completions", json=small).json()["error"]["code"] == "invalid_api_key"
        assert len(validated) == 1  # a small body: judged, then its key looked up
        answer = known.post("/chat/completions", json=large)
    assert answer.status_code == 400 and answer.json()["error"]["param"].startswith("messages.0.content"), answer.text
