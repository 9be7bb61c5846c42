"""What the fake upstreams share: the knobs a test turns, and what the fake saw.

A test sets knobs on `fake.behaviour` (a plain mutable dataclass, read on every request) and
asserts on `fake.requests` / `fake.last_request` and the stream counters:

    with openai_upstream.run(Behaviour(fail_first=2, fail_status=429, retry_after="1")) as fake:
        provider = OpenAICompatProvider(client, fake.base_url, "sk-test")
        fake.behaviour.chunk_delay = 0.05          # knobs may change between requests
        ... fake.last_request.json["messages"] ...
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tests.fakes.server import serve


@dataclass
class Behaviour:
    answer: str = "Hello! How can I help you today?"
    refusal: str | None = None  # OpenAI-compatible only: the model refuses, in `refusal`, with no content
    chunks: list[str] | None = None  # streamed pieces; default: the answer split into words
    finish: str | None = None  # the vendor's finish reason; None: its normal "done" value
    prompt_tokens: Any = 12  # what the vendor sends: an int, or something broken (a string, -9, 12.5)
    completion_tokens: Any = 9
    thoughts_tokens: int = 0  # Gemini: thoughtsTokenCount; OpenAI-compatible: completion_tokens_details'
    #   reasoning_tokens
    reasoning_apart: bool = False  # OpenAI-compatible: xAI's count, reasoning outside completion_tokens (in the total)
    cached_tokens: int = 0  # Anthropic: cache_read_input_tokens, apart from input_tokens; OpenAI-compatible:
    #   prompt_tokens_details' cached_tokens, among prompt_tokens
    delta_input_tokens: bool = False  # Anthropic only: message_delta repeats input_tokens (not the cache counts)
    usage_in: str = "chunk"  # OpenAI-compatible streams: "chunk" (OpenAI's own, a last chunk of its own),
    #   "choice" (Moonshot's: in the finish chunk's choices[0].usage), "x_groq" (Groq's older x_groq.usage),
    #   "finish" (Mistral's: in the finish chunk, always, with or without stream_options)
    omit_usage: bool = False  # answer without any usage / token counts
    fail_first: int = 0  # the first K requests fail with fail_status ...
    fail_status: int = 500
    retry_after: str | None = None  # ... carrying this Retry-After header
    error_message: str = "The fake upstream failed"
    error_code: str | None = None  # OpenAI-compatible only: the error's code and param (e.g. context_length_exceeded)
    error_param: str | None = None
    error_reason: str | None = None  # Gemini only: ErrorInfo reason, e.g. API_KEY_INVALID
    error_after_chunks: int | None = None  # stream: a vendor error event after N content chunks
    drop_after_chunks: int | None = None  # stream: drop the connection after N content chunks
    hang: float = 0.0  # seconds to wait before answering (until the client gives up)
    chunk_delay: float = 0.0  # seconds before each streamed chunk
    thinking: list[str] | None = None  # OpenAI-compatible: a reasoning model's thinking, as `reasoning_content`
    #   (DeepSeek's and Moonshot's form): streamed in these pieces before the answer, joined in a plain answer
    require_reasoning: bool = False  # OpenAI-compatible: Moonshot's thinking models, which answer 400 to an
    #   assistant turn with tool calls sent back without its `reasoning_content`
    minimax_thinking: str | None = None  # OpenAI-compatible: MiniMax's M2 models' thinking, plain and streamed,
    #   inline in the content as `<think>...</think>` unless the request says `reasoning_split: true`, then
    #   in `reasoning_details` ([{"type": "reasoning.text", "text": ...}], each chunk's piece its own)

    minimax_status: tuple[int, str] | None = None  # OpenAI-compatible: MiniMax's failure inside an HTTP 200,
    #   `base_resp` {status_code, status_msg} with no choices; a stream request gets it as one JSON body
    tool_calls: list[tuple[str, dict[str, Any]]] | None = None  # the model calls these function tools
    #   ((name, arguments) each, in order) after `answer` (which may be ""), in each vendor's own form: plain and
    #   streamed (the arguments' JSON text in several pieces where the vendor streams it so); its finish reason
    #   then says so (OpenAI "tool_calls", Anthropic "tool_use"; Gemini's stays STOP)

    def pieces(self) -> list[str]:
        return self.chunks if self.chunks is not None else re.findall(r"\S+\s*|\s+", self.answer)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


@dataclass
class FakeUpstream:
    behaviour: Behaviour = field(default_factory=Behaviour)
    base_url: str = ""
    requests: deque[Recorded] = field(default_factory=lambda: deque(maxlen=1000))
    request_count: int = 0
    streams_opened: int = 0
    streams_closed: int = 0
    streams_completed: int = 0  # closed after sending everything (not cut by the client or a drop)

    def reset(self, behaviour: Behaviour | None = None) -> None:
        """Fresh knobs and counters (for a fake shared by several tests)."""
        self.behaviour = behaviour or Behaviour()
        self.requests.clear()
        self.request_count = self.streams_opened = self.streams_closed = self.streams_completed = 0

    @property
    def last_request(self) -> Recorded:
        return self.requests[-1]

    async def receive_request(self, request: Request) -> tuple[Any, int | None]:
        """Record the request; returns its JSON and the error status to answer with, if any."""
        self.request_count += 1
        body = await request.body()
        data = await request.json() if body else None
        self.requests.append(Recorded(request.method, request.url.path, dict(request.query_params),
                                      {k.lower(): v for k, v in request.headers.items()}, data))
        if self.behaviour.hang:
            await _sleep_unless_disconnected(request, self.behaviour.hang)
        failing = self.request_count <= self.behaviour.fail_first
        return data, self.behaviour.fail_status if failing else None

    def error_headers(self) -> dict[str, str]:
        return {"retry-after": self.behaviour.retry_after} if self.behaviour.retry_after else {}

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate` (the fake runs in another thread) until true or the timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True


class TrackedStream(StreamingResponse):
    """A streamed response that counts opened/closed/completed streams and stops producing as
    soon as the client disconnects (Starlette's StreamingResponse would leave the generator
    suspended, so a cut stream would not be counted promptly)."""

    def __init__(self, fake: FakeUpstream, body: AsyncGenerator[bytes, None],
                 media_type: str = "text/event-stream") -> None:
        super().__init__(body, media_type=media_type, headers={"cache-control": "no-cache"})
        self.fake = fake
        self.body_generator = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.fake.streams_opened += 1
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
                await send({"type": "http.response.start", "status": self.status_code,
                            "headers": self.raw_headers})
                async for chunk in self.body_iterator:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await anyio.sleep(0)  # a checkpoint, so a disconnect stops even a delay-free stream
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                self.fake.streams_completed += 1
                group.cancel_scope.cancel()
        finally:
            await self.body_generator.aclose()
            self.fake.streams_closed += 1


class DroppedConnection(Exception):
    """Raised by a fake's stream to make uvicorn abort the connection mid-response."""


DROP_AFTER_SECONDS = 0.2


async def drop_connection() -> NoReturn:
    """Break the stream a moment after the last chunk sent, so the chunks before the break reach
    the client first: an abort that lands together with them can discard them in the receiving
    kernel or client before anyone reads them, which would make "what was sent before the break"
    a race rather than a fact the tests can check."""
    await asyncio.sleep(DROP_AFTER_SECONDS)
    raise DroppedConnection


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _sleep_unless_disconnected(request: Request, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.02)


@contextmanager
def running(build_app: Callable[[FakeUpstream], Starlette], prefix: str,
            behaviour: Behaviour | None) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(behaviour or Behaviour())
    with serve(build_app(fake)) as url:
        fake.base_url = url + prefix
        yield fake
