"""A fake OpenAI Chat Completions upstream: POST /v1/chat/completions, plain and SSE.

Fast by default (a fixed short answer, no delay), so benchmarks can stand it in for a vendor:

    python -m tests.fakes.openai_upstream --port 9100     # base_url http://127.0.0.1:9100/v1

Mid-stream failures: `error_after_chunks` sends an OpenAI error object as a data event (as
OpenAI-compatible servers do), `drop_after_chunks` aborts the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.upstream import Behaviour, FakeUpstream, TrackedStream, drop_connection, running

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_error"}


def build_app(fake: FakeUpstream) -> Starlette:
    async def chat_completions(request: Request) -> Response:
        body, failure = await fake.receive_request(request)
        if failure is not None:
            error = {"message": fake.behaviour.error_message,
                     "type": _ERROR_TYPES.get(failure, "server_error"), "param": fake.behaviour.error_param,
                     "code": fake.behaviour.error_code}
            return JSONResponse({"error": error}, failure, headers=fake.error_headers())
        if fake.behaviour.require_reasoning and (index := _turn_without_reasoning(body["messages"])) is not None:
            error = {"message": "thinking is enabled but reasoning_content is missing in assistant tool call "
                                f"message at index {index}", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, 400)
        if fake.behaviour.minimax_status is not None:
            return JSONResponse(_minimax_failure(*fake.behaviour.minimax_status, body["model"]))
        behaviour = _minimax_form(fake.behaviour, split=body.get("reasoning_split") is True)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return TrackedStream(fake, _stream(behaviour, body["model"], include_usage))
        return JSONResponse(_completion(behaviour, body["model"]))

    return Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])])


def _turn_without_reasoning(messages: list[dict[str, Any]]) -> int | None:
    """The index of the first assistant turn with tool calls and no `reasoning_content` field
    (Moonshot's and DeepSeek's check: an empty one is there)."""
    return next((i for i, m in enumerate(messages) if m.get("role") == "assistant" and m.get("tool_calls")
                 and m.get("reasoning_content") is None), None)


def _minimax_form(b: Behaviour, split: bool) -> Behaviour:
    """MiniMax's thinking (its OpenAI-compatible API page): without `reasoning_split` it is the
    content's start, in <think> tags; with it, `reasoning_details` (read by _completion/_stream)."""
    if b.minimax_thinking is None or split:
        return b
    answer = f"<think>{b.minimax_thinking}</think>\n\n{b.answer}"
    return dataclasses.replace(b, answer=answer, minimax_thinking=None,
                               chunks=None if b.chunks is None else [f"<think>{b.minimax_thinking}</think>", *b.chunks])


def _minimax_failure(code: int, message: str, model: str) -> dict[str, Any]:
    """MiniMax's failure inside an HTTP 200: no choices, its status in `base_resp`."""
    return {"id": "0635c8a9c4d1", "choices": None, "created": int(time.time()), "model": model,
            "object": "chat.completion", "usage": {"total_tokens": 0}, "input_sensitive": False,
            "output_sensitive": False, "base_resp": {"status_code": code, "status_msg": message}}


def _reasoning_details(text: str) -> list[dict[str, Any]]:
    return [{"type": "reasoning.text", "id": "reasoning-text-1", "format": "MiniMax-response-v1", "index": 0,
             "text": text}]


def _usage(b: Behaviour) -> dict[str, Any]:
    counts = (b.prompt_tokens, b.completion_tokens, b.thoughts_tokens if b.reasoning_apart else 0)
    total = sum(counts) if all(type(c) is int for c in counts) else None
    usage = {"prompt_tokens": b.prompt_tokens, "completion_tokens": b.completion_tokens, "total_tokens": total}
    if b.thoughts_tokens:  # OpenAI counts them inside completion_tokens, xAI apart (reasoning_apart)
        usage["completion_tokens_details"] = {"reasoning_tokens": b.thoughts_tokens}
    if b.cached_tokens:  # OpenAI counts them inside prompt_tokens
        usage["prompt_tokens_details"] = {"cached_tokens": b.cached_tokens}
    return usage


def _calls(b: Behaviour) -> list[dict[str, Any]]:
    """Behaviour.tool_calls as OpenAI's message.tool_calls (arguments as JSON text)."""
    return [{"id": f"call_fake{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in enumerate(b.tool_calls or ())]


def _finish(b: Behaviour) -> str:
    return b.finish or ("tool_calls" if b.tool_calls else "stop")


def _completion(b: Behaviour, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None if b.refusal or (b.tool_calls and not b.answer)
                               else b.answer, "refusal": b.refusal}
    if b.tool_calls:
        message["tool_calls"] = _calls(b)
    data: dict[str, Any] = {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
        "model": model, "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(b)}],
    }
    if b.minimax_thinking is not None:
        data["choices"][0]["message"]["reasoning_details"] = _reasoning_details(b.minimax_thinking)
    if b.thinking is not None:
        message["reasoning_content"] = "".join(b.thinking)
    if not b.omit_usage:
        data["usage"] = _usage(b)
    return data


def _event(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def _stream(b: Behaviour, model: str, include_usage: bool) -> AsyncGenerator[bytes, None]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_fake"}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if extra.get("usage"):
            choice["usage"] = extra.pop("usage")
        return _event({**base, "choices": [choice], **extra})

    yield chunk({"role": "assistant", "content": None if b.refusal else ""})
    for piece in b.thinking or []:
        if b.chunk_delay:
            await asyncio.sleep(b.chunk_delay)
        yield chunk({"content": None, "reasoning_content": piece})
    if b.minimax_thinking is not None:  # MiniMax streams each piece alone, not the text so far
        for piece in re.findall(r"\S+\s*|\s+", b.minimax_thinking):
            yield chunk({"content": "", "reasoning_details": _reasoning_details(piece)})
    for sent, piece in enumerate(b.pieces() if b.refusal is None else re.findall(r"\S+\s*", b.refusal)):
        if sent == b.error_after_chunks:
            yield _event({"error": {"message": b.error_message, "type": "server_error"}})
            return
        if sent == b.drop_after_chunks:
            await drop_connection()
        if b.chunk_delay:
            await asyncio.sleep(b.chunk_delay)
        yield chunk({"refusal": piece} if b.refusal else {"content": piece})
    for index, call in enumerate(_calls(b)):  # OpenAI's form: id and name first, then the arguments in pieces
        yield chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                     "function": {"name": call["function"]["name"], "arguments": ""}}]})
        arguments = call["function"]["arguments"]
        for start in range(0, len(arguments), 5):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[start:start + 5]}}]})
    # Mistral's stream always ends with its usage, in the finish chunk, asked for or not
    usage = _usage(b) if (include_usage or b.usage_in == "finish") and not b.omit_usage else None
    if usage and b.usage_in == "finish":
        yield _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish(b)}],
                      "usage": usage})
    elif usage and b.usage_in == "choice":
        yield chunk({}, _finish(b), usage=usage)
    elif usage and b.usage_in == "x_groq":
        yield chunk({}, _finish(b), x_groq={"id": "req_fake", "usage": usage})
    else:
        yield chunk({}, _finish(b))
        if usage:
            yield _event({**base, "choices": [], "usage": usage})
    yield _event("[DONE]")


@contextmanager
def run(behaviour: Behaviour | None = None) -> Iterator[FakeUpstream]:
    """Serve the fake on a free port; `fake.base_url` ends in /v1, as OpenAI's does."""
    with running(build_app, "/v1", behaviour) as fake:
        yield fake


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="A fast fake OpenAI-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvicorn.run(build_app(FakeUpstream()), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
