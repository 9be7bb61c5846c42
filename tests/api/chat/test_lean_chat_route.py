"""The chat route is served by a plain handler (api.lean_route), not by FastAPI's request handler:
whatever a client sends, the answer is the one FastAPI's own handling of the same endpoint gives.
Both are mounted side by side on one app and sent the same requests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.deps import KeyCheckedInRoute
from api.routes.chat import chat_completions
from common.settings import Settings
from tests.api.test_strict_input import ledger_count
from tests.conftest import TestAccount

LEAN, FASTAPI = "/api/v1/chat/completions", "/fastapi/chat/completions"
GOOD = {"model": "helyx-3.5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def both(settings: Settings, engine: Engine) -> Iterator[TestClient]:
    from api.app import create_app

    app = create_app(settings)
    app.router.routes.append(APIRoute(FASTAPI, chat_completions, methods=["POST"], dependencies=[KeyCheckedInRoute]))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("not JSON", b'{"model": ', JSON),
    ("empty body", b"", JSON),
    ("no content type", b'{"model": "helyx-3.5"}', {}),
    ("text/plain", b'{"model": "helyx-3.5"}', {"Content-Type": "text/plain"}),
    ("+json with charset", b'{"model": 5}', {"Content-Type": "application/vnd.x+json; charset=utf-8"}),
    ("JSON with charset, good", b'{"model": "helyx-3.5", "messages": [{"role": "user", "content": "hi"}]}',
     {"Content-Type": "application/json; charset=utf-8"}),
    ("a list", b"[1, 2]", JSON),
    ("a string", b'"hi"', JSON),
    ("null", b"null", JSON),
    ("missing messages", b'{"model": "helyx-3.5"}', JSON),
    ("wrong types", b'{"model": 5, "messages": "hi", "max_tokens": "9", "stream": "yes"}', JSON),
    ("NaN", b'{"model": "helyx-3.5", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', JSON),
    ("bad role", b'{"model": "helyx-3.5", "messages": [{"role": "robot", "content": "hi"}]}', JSON),
    ("bad part", b'{"model": "helyx-3.5", "messages": [{"role": "user", "content": [{"type": "x"}]}]}', JSON),
    ("invalid UTF-8", b'{"model": "helyx-3.5\xff", "messages": []}', JSON),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, JSON),
    ("tools", b'{"model": "helyx-3.5", "messages": [{"role": "user", "content": "hi"}], "tools": []}', JSON),
]


@pytest.mark.parametrize(("case", "body", "headers"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("key", ["good", "none", "malformed", "unknown"])
def test_every_request_is_answered_as_fastapi_answers_it(both: TestClient, engine: Engine, account: TestAccount,
                                                        case: str, body: bytes, headers: dict[str, str],
                                                        key: str) -> None:
    auth = {"good": account.headers, "none": {}, "malformed": {"Authorization": "Bearer hx-nope"},
            "unknown": {"Authorization": "Bearer " + account.api_key[:-1] + ("A" if account.api_key[-1] != "A"
                                                                              else "B")}}[key]
    entries = ledger_count(engine, account.account_id)
    answers = [both.post(path, content=body, headers={**headers, **auth}) for path in (LEAN, FASTAPI)]
    lean, fastapi = ({"status": a.status_code, "body": _without_ids(a.json())} for a in answers)
    assert lean == fastapi
    if lean["status"] != 200:
        assert ledger_count(engine, account.account_id) == entries


def _without_ids(body: Any) -> Any:
    """A completion's own id, time and generation differ between two calls; an error does not."""
    if isinstance(body, dict) and body.get("object") == "chat.completion":
        return {k: v for k, v in body.items() if k not in ("id", "created", "helyx")}
    return body


def test_the_good_request_is_served_and_charged_by_both(both: TestClient, engine: Engine,
                                                        account: TestAccount) -> None:
    entries = ledger_count(engine, account.account_id)
    for path in (LEAN, FASTAPI):
        answer = both.post(path, json=GOOD, headers=account.headers)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"], answer.text
    assert ledger_count(engine, account.account_id) > entries
