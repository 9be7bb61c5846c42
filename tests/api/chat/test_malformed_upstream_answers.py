"""A provider's 2xx answer of an unexpected shape (a list where an object belongs, a number where
text does) is a 502 `upstream_bad_response` with `x-should-retry: false`, charged nothing, its
record naming that code: it was a 500 without that header, which the SDK retried twice (three
paid provider calls for one request), its record saying `AttributeError`. Text is never passed on
as anything but text. Found by a security review with a hostile upstream."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.api.chat.helpers import FAKE_PROVIDER_KEY, Gateway, assert_books_balance, books
from tests.fakes.server import serve

HI = [{"role": "user", "content": "hi"}]


class Scripted:
    """An upstream that answers every POST with `body` (JSON), or with `events` (SSE data lines)
    when the request asks for a stream; it counts the requests."""

    def __init__(self) -> None:
        self.body: Any = None
        self.events: list[Any] = []
        self.requests = 0

    async def answer(self, request: Request) -> Response:
        self.requests += 1
        asked = await request.json()
        if asked.get("stream"):
            lines = [f"data: {json.dumps(event)}\n\n".encode() for event in self.events]

            async def body() -> Any:
                for line in lines:
                    yield line

            return StreamingResponse(body(), media_type="text/event-stream")
        return JSONResponse(self.body)


@pytest.fixture(scope="module")
def _scripted_server() -> Iterator[tuple[Scripted, str]]:
    scripted = Scripted()
    app = Starlette(routes=[Route("/{path:path}", scripted.answer, methods=["POST"])])
    with serve(app, name="scripted-upstream") as url:
        yield scripted, url


@pytest.fixture
def scripted(_scripted_server: tuple[Scripted, str]) -> Scripted:
    server = _scripted_server[0]
    server.body, server.events, server.requests = None, [], 0
    return server


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway], _scripted_server: tuple[Scripted, str], tmp_path: Any,
            monkeypatch: pytest.MonkeyPatch, database: dict[str, str]) -> Gateway:
    url = _scripted_server[1]
    path = tmp_path / "catalog.toml"
    path.write_text(f'[providers.openai]\nbase_url = "{url}/v1"\n[providers.anthropic]\nbase_url = "{url}"\n'
                    f'[providers.gemini]\nbase_url = "{url}/v1beta"\n', "utf-8")
    for env in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.setenv(env, FAKE_PROVIDER_KEY)
    return make_gateway(catalog=path, upstream_retries=2, upstream_backoff_seconds=0.01, **database)


def _usage(total: int = 3) -> dict[str, int]:
    return {"prompt_tokens": 1, "completion_tokens": total - 1, "total_tokens": total}


MALFORMED = [
    ("gpt-4o", {"choices": "x", "usage": _usage()}),
    ("gpt-4o", {"choices": ["x"], "usage": _usage()}),
    ("gpt-4o", {"choices": [{"message": "hi"}], "usage": _usage()}),
    ("gpt-4o", {"choices": [{"message": {"content": 123}, "finish_reason": "stop"}], "usage": _usage()}),
    ("gpt-4o", {"choices": [{"message": {"content": "hi"}, "finish_reason": 5}], "usage": _usage()}),
    ("claude-3-5-sonnet", {"type": "message", "content": "x", "stop_reason": "end_turn"}),
    ("claude-3-5-sonnet", {"type": "message", "content": [{"type": "text", "text": 5}], "stop_reason": "end_turn"}),
    ("gemini-1-5-pro", {"candidates": [{"content": {"parts": [{"text": ["a"]}]}, "finishReason": "STOP"}]}),
    ("gpt-4o", [{"choices": []}]), ("gpt-4o", {"choices": {}}), ("claude-3-5-sonnet", ["x"]),
    ("gemini-1-5-pro", ["x"]),
]


@pytest.mark.parametrize(("model", "body"), MALFORMED)
def test_a_malformed_answer_is_a_502_not_retried_and_charged_nothing(gateway: Gateway, scripted: Scripted,
                                                                     model: str, body: Any) -> None:
    scripted.body = body
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.sdk(account, max_retries=2) as client, pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model=model, messages=HI, max_tokens=5)
    assert failed.value.status_code == 502
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert failed.value.code == "upstream_bad_response"
    assert scripted.requests == 1  # neither the SDK nor the gateway asked again: each call is paid for
    assert assert_books_balance(gateway.engine, account.account_id).balance == before.balance
    with gateway.engine.connect() as conn:
        records = conn.execute(text("SELECT status, error_code, credits FROM generations WHERE account_id = :a"),
                               {"a": account.account_id}).all()
    assert [tuple(r) for r in records] == [("failed", "upstream_bad_response", 0)]


def test_content_as_a_list_of_parts_is_its_text_parts(gateway: Gateway, scripted: Scripted) -> None:
    """Mistral's reasoning models answer a list of parts: the text parts are the answer."""
    scripted.body = {"choices": [{"message": {"content": [{"type": "thinking", "thinking": [{"type": "text",
                                                                                              "text": "hmm"}]},
                                                          {"type": "text", "text": "Hello"},
                                                          {"type": "text", "text": " there"}]},
                                  "finish_reason": "stop"}], "usage": _usage()}
    with gateway.sdk(gateway.account()) as client:
        completion = client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=5)
    assert completion.choices[0].message.content == "Hello there"


def test_a_malformed_first_chunk_is_a_502_before_the_stream(gateway: Gateway, scripted: Scripted) -> None:
    scripted.events = [{"choices": ["x"]}]
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.http(account) as http:
        answer = http.post("/chat/completions", json={"model": "gpt-4o", "messages": HI, "stream": True})
    assert answer.status_code == 502 and answer.headers["x-should-retry"] == "false", answer.text
    assert answer.json()["error"]["code"] == "upstream_bad_response"
    assert scripted.requests == 1
    assert assert_books_balance(gateway.engine, account.account_id).balance == before.balance


def test_a_malformed_chunk_mid_stream_ends_it_with_an_error_event(gateway: Gateway, scripted: Scripted) -> None:
    scripted.events = [{"choices": [{"delta": {"role": "assistant", "content": "Hel"}}]},
                       {"choices": [{"delta": {"content": 5}}]}]
    account = gateway.account()
    before = books(gateway.engine, account.account_id)
    with gateway.http(account) as http:
        answer = http.post("/chat/completions", json={"model": "gpt-4o", "messages": HI, "stream": True})
    events = [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]
    assert [e["choices"][0]["delta"].get("content") for e in events if e.get("choices")] == ["Hel"]
    assert events[-1]["error"]["code"] == "upstream_bad_response"
    assert events[-1]["helyx"]["credits_charged"] == 0  # a call that failed upstream costs nothing
    assert assert_books_balance(gateway.engine, account.account_id).balance == before.balance
