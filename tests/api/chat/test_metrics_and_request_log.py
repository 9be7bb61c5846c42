"""/metrics and the request log line, through a served gateway: a chat shows up in the request
counter under its route template, its charge in the credits-by-model counter (read from the
database) and no hold stays open; a made-up HTTP method is counted as "other" (it cannot mint new
series); each request logs one line with its route, status, latency, account and charge, and never
the key."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.api.chat.helpers import Gateway, Records

CHAT = {"model": "helyx-3.5", "messages": [{"role": "user", "content": "count me"}], "max_tokens": 16}


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition text, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_chat_is_counted_charged_and_logged_once(gateway: Gateway, request_log: Records) -> None:
    account = gateway.account("pro")
    root = gateway.url
    before = httpx.get(root + "/metrics", trust_env=False).text
    with gateway.http(account) as http:
        answer = http.post("/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text
    charged = answer.json()["helyx"]["credits_charged"]
    after = httpx.get(root + "/metrics", trust_env=False).text

    route = {"route": "/api/v1/chat/completions", "method": "POST", "status": "200"}
    assert (_sample(after, "helyx_http_requests_total", **route) or 0) - (
        _sample(before, "helyx_http_requests_total", **route) or 0) == 1
    credits = {"model": "helyx-3.5", "kind": "chat"}
    assert (_sample(after, "helyx_credits_charged_total", **credits) or 0) - (
        _sample(before, "helyx_credits_charged_total", **credits) or 0) == pytest.approx(charged)
    assert _sample(after, "helyx_open_holds") == 0
    for kind in ("image", "video"):  # no job yet: every series is there, at zero (a series never vanishes)
        assert [_sample(after, "helyx_jobs", type=kind, state=s) for s in ("queued", "running", "failed")] == [0] * 3
    # helyx-3.5 is simulated here: its answers are not counted as its catalog provider's calls
    simulated = {"provider": "simulated", "kind": "complete"}
    assert (_sample(after, "helyx_upstream_request_duration_seconds_count", **simulated) or 0) - (
        _sample(before, "helyx_upstream_request_duration_seconds_count", **simulated) or 0) == 1
    groq = {"provider": "groq", "kind": "complete"}  # its catalog provider
    assert _sample(after, "helyx_upstream_request_duration_seconds_count", **groq) == _sample(
        before, "helyx_upstream_request_duration_seconds_count", **groq)

    lines = [r for r in request_log.records if getattr(r, "route", None) == "/api/v1/chat/completions"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.status, line.method, line.account_id, line.model) == (200, "POST", account.account_id,  # type: ignore[attr-defined]
                                                                       "helyx-3.5")
    assert line.credits == pytest.approx(charged) and line.latency_ms > 0  # type: ignore[attr-defined]
    assert line.key_prefix and account.api_key not in str(vars(line))  # type: ignore[attr-defined]


def test_a_made_up_method_is_counted_as_other(gateway: Gateway) -> None:
    response = httpx.request("PROPFIND", gateway.url + "/api/v1/models", trust_env=False)  # WebDAV: parsed, not ours
    assert response.status_code == 405
    text = httpx.get(gateway.url + "/metrics", trust_env=False).text
    assert 'method="PROPFIND"' not in text
    assert (_sample(text, "helyx_http_requests_total", route="/api/v1/models", method="other", status="405")
            or 0) >= 1


def test_a_refused_request_names_its_model_in_its_log_line(gateway: Gateway, request_log: Records) -> None:
    """A 403 for a plan's model (and a 402, or a media job refused) logged the caller, not the model."""
    account = gateway.account("free")
    with gateway.http(account) as http:
        chat = http.post("/chat/completions", json={**CHAT, "model": "claude-4.7"})
        video = http.post("/videos", json={"model": "vo3", "prompt": "a wave"})
    assert (chat.status_code, video.status_code) == (403, 403), (chat.text, video.text)
    logged = {r.route: r for r in request_log.records if getattr(r, "route", "").startswith("/api/v1/")}
    assert (logged["/api/v1/chat/completions"].status, logged["/api/v1/chat/completions"].model) == (  # type: ignore[attr-defined]
        403, "claude-4.7")
    assert (logged["/api/v1/videos"].status, logged["/api/v1/videos"].model) == (403, "vo3")  # type: ignore[attr-defined]


def test_the_api_documents_are_counted_and_logged_by_their_path(gateway: Gateway, request_log: Records) -> None:
    """FastAPI's own routes leave no route in the scope: they were all logged as "unmatched", like a 404."""
    for path in ("/openapi.json", "/docs"):
        assert httpx.get(gateway.url + path, trust_env=False).status_code == 200
    assert httpx.get(gateway.url + "/docs/nothing-here", trust_env=False).status_code == 404
    watched = ("/openapi.json", "/docs", "unmatched")
    routes = [getattr(r, "route", None) for r in request_log.records]
    assert [r for r in routes if r in watched] == list(watched)
    text = httpx.get(gateway.url + "/metrics", trust_env=False).text
    assert (_sample(text, "helyx_http_requests_total", route="/openapi.json", method="GET", status="200") or 0) >= 1
