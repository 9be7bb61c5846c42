"""A streamed chat completion (SPEC §4): chunks passed on as they arrive, the last with `usage`
and `helyx`, then `[DONE]`; settled exactly once however the stream ends (finished, failed
upstream, left by the client, cut by the server's shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from api.chat_call import CLIENT_DISCONNECTED, SERVER_SHUTDOWN, ChatCall
from api.sse import SSE_DONE, EventStreamResponse, StreamEnd, sse_data
from common import chat_billing
from common.chat_billing import Outcome
from common.errors import ChargeUnconfirmed, HelyxError, ServerError, UpstreamError
from common.providers.base import ChatDelta, Usage
from common.providers.retry import open_stream_with_retries

log = logging.getLogger("helyx.api")


async def stream(call: ChatCall, request: Request) -> Response:
    settings = call.services.settings
    opened = await _unless_the_client_leaves(request, call, lambda: call.upstream(
        "stream_first_chunk", lambda: open_stream_with_retries(
            lambda: call.provider.stream(call.request), retries=settings.upstream_retries,
            backoff=settings.upstream_backoff_seconds), stream=True))
    if opened is None:  # nobody to answer; the call was settled as it stopped
        return Response(status_code=499)
    first, stream = opened
    call.upstream_fingerprint = first.system_fingerprint
    end = StreamEnd()

    async def abandoned() -> None:
        await _aclose(stream)
        await _cut_off(call, end, None, first.usage, [_produced(first)], first.prompt_tokens)

    return EventStreamResponse(_events(call, first, stream, end), headers=call.headers, on_unstarted=abandoned,
                               end=end)


async def _unless_the_client_leaves(
        request: Request, call: ChatCall, opening: Callable[[], Awaitable[tuple[ChatDelta, AsyncIterator[ChatDelta]]]],
) -> tuple[ChatDelta, AsyncIterator[ChatDelta]] | None:
    """Open the upstream stream while watching the client: its head goes out with the first chunk,
    so a client that leaves before (its read timeout shorter than the time to the first token, and
    the SDK then retries it) was not noticed, and the upstream call ran on and was charged in full.
    Now the attempt is cancelled, charged nothing (nothing was produced; ChatCall.upstream), and
    None returned."""
    opened, failure = None, None
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            call.client_gone = True
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            opened = await opening()
        except Exception as exc:  # noqa: BLE001 - raised after the group, which would wrap it in an ExceptionGroup
            failure = exc
        group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return opened


async def _events(call: ChatCall, first: ChatDelta, stream: AsyncIterator[ChatDelta],
                  end: StreamEnd) -> AsyncGenerator[bytes, None]:
    """Pass chunks on as they arrive; settle exactly once however the stream ends.

    The last chunk carries `usage` and `helyx` (SPEC §4). With `include_usage` it is a chunk of
    its own with no choices, as OpenAI sends it. Without, OpenAI sends no such chunk, and code
    written for it reads `chunk.choices[0]` on every chunk: the chunk with the finish reason is
    then held back and sent last, with `usage` and `helyx` added to it."""
    produced: list[str] = []
    usage: Usage | None = None
    prompt_tokens: int | None = None  # stated by the vendor before its usage (ChatDelta.prompt_tokens)
    outcome: Outcome | None = None
    held: tuple[dict[str, Any], str] | None = None  # the finish chunk, without include_usage
    stopped_by: BaseException | None = None
    try:
        delta: ChatDelta | None = first
        role_sent = False
        error: UpstreamError | None = None
        try:
            while delta is not None:
                produced.append(_produced(delta))
                usage = delta.usage or usage
                prompt_tokens = delta.prompt_tokens if delta.prompt_tokens is not None else prompt_tokens
                if (delta.content or delta.refusal or delta.thinking or delta.tool_calls or delta.finish_reason
                        or not role_sent):
                    payload: dict[str, Any] = {} if role_sent else {"role": "assistant"}
                    # OpenAI's finish chunk has an empty delta: with "content": "" there, the SDK's
                    # stream helper made a tool-call answer's content "" instead of None
                    if delta.content or not (delta.refusal or delta.thinking or delta.tool_calls
                                             or (delta.finish_reason and role_sent)):
                        payload["content"] = delta.content
                    role_sent = True
                    if delta.thinking:  # a reasoning model's thinking, as DeepSeek and Moonshot stream it
                        payload["reasoning_content"] = delta.thinking
                    if delta.refusal:  # OpenAI's refusal, streamed apart from the content
                        payload["refusal"] = delta.refusal
                    if delta.tool_calls:  # OpenAI's form: the first piece of a call names it, the rest add arguments
                        payload["tool_calls"] = [piece.openai_view() for piece in delta.tool_calls]
                    if delta.finish_reason and not call.include_usage and held is None:
                        held = (payload, delta.finish_reason)
                    else:
                        yield call.chunk(payload, delta.finish_reason)
                delta = await anext(stream, None)
        except UpstreamError as exc:
            error = exc
        finally:
            with anyio.CancelScope(shield=True):
                await _aclose(stream)
        outcome = _stream_outcome(call, "interrupted" if error else "succeeded", usage, produced,
                                  error.code if error else None, prompt_tokens)
        unsettled: HelyxError | None = None
        with anyio.CancelScope(shield=True):  # a client leaving now must not skip the settlement
            try:
                settlement = await call.finish(outcome, stream=True)
            except Exception as exc:  # noqa: BLE001 - the client is told below, in the stream
                unsettled = _settlement_failure(call, exc)
        if held is not None and (unsettled is not None or error is not None):
            yield call.chunk(*held)  # what it holds was produced: it is sent before the error
        if unsettled is not None:  # the 200 is long gone: the stream ends with the error instead
            charged = ({"credits_charged": None, "generation_id": call.id} if isinstance(unsettled, ChargeUnconfirmed)
                       else {"credits_charged": 0})
            yield sse_data({"error": {"message": unsettled.message, "type": unsettled.type, "code": unsettled.code,
                                      "param": None}, "helyx": charged})
            return
        if error is not None:
            yield sse_data({"error": {"message": f"The upstream provider failed mid-stream: {error.message}",
                                      "type": error.type, "code": error.code, "param": None},
                            "helyx": chat_billing.helyx_block(settlement)})
            return
        last: dict[str, Any] = {"usage": outcome.usage.openai_view() if outcome.usage else None,
                "helyx": {**chat_billing.helyx_block(settlement), "generation_id": call.id}}
        if held is not None:
            yield call.chunk(*held, **last)
        else:
            yield sse_data({
                "id": call.id, "object": "chat.completion.chunk", "created": call.created, "model": call.entry.id,
                "system_fingerprint": call.shown_fingerprint, "choices": [], **last,
            })
        yield SSE_DONE
    except BaseException as exc:
        stopped_by = exc
        raise
    finally:
        if outcome is None:  # the client went away, or the server cut the stream: charge what was produced
            with anyio.CancelScope(shield=True):
                await _aclose(stream)
                await _cut_off(call, end, stopped_by, usage, produced, prompt_tokens)


async def _cut_off(call: ChatCall, end: StreamEnd, stopped_by: BaseException | None, usage: Usage | None,
                   produced: list[str], prompt_tokens: int | None) -> None:
    """Settle a stream that stopped before its end and name why: the client left, or the server
    cut it at the end of its shutdown grace (a cancellation with the client still there; an error
    event is left for the client as its last words): both `cancelled`, charged for what was
    produced; or a fault of ours (`interrupted`, internal_error: a failure, which costs nothing)."""
    if end.client_gone:
        await call.finish_or_log(_stream_outcome(call, "cancelled", usage, produced, CLIENT_DISCONNECTED,
                                                 prompt_tokens), True)
        return
    cut = stopped_by is None or isinstance(stopped_by, (asyncio.CancelledError, GeneratorExit))
    status, code = ("cancelled", SERVER_SHUTDOWN) if cut else ("interrupted", "internal_error")
    settlement = await call.finish_or_log(_stream_outcome(call, status, usage, produced, code, prompt_tokens), True)
    charged = ("what it produced is charged" if settlement is not None
               else "its charge could not be recorded, so nothing is charged")
    message = (f"The server is shutting down and cut this stream off before its end; {charged}. "
               "Retry for a complete answer." if cut else
               "The gateway failed mid-stream; nothing is charged.")
    end.last_words = sse_data({
        "error": {"message": message, "type": "server_error", "code": code, "param": None},
        "helyx": {**(chat_billing.helyx_block(settlement) if settlement else {"credits_charged": None}),
                  "generation_id": call.id},
    })


def _settlement_failure(call: ChatCall, exc: Exception) -> HelyxError:
    """What a stream's client is told when its settlement failed: the error itself when it is
    ours (a lost reservation: nothing charged; a charge the database's absence left unconfirmed),
    else a failure of the settlement's own (it rolled back: nothing charged, the hold is released
    at its expiry)."""
    if isinstance(exc, HelyxError):
        return exc
    log.error("chat %s: settlement failed (%r); its hold is released at expiry", call.id, exc)
    return ServerError("The gateway failed to record this call's charge; nothing was charged.")


def _stream_outcome(call: ChatCall, status: str, usage: Usage | None, produced: list[str], code: str | None,
                    prompt_tokens: int | None = None) -> Outcome:
    """The vendor's usage; without it, the estimate, with the prompt's count the vendor stated, if it did."""
    if usage is not None:
        return Outcome(call.id, status, usage, error_code=code)
    estimate = chat_billing.estimated_usage(call.request.messages, "".join(produced), call.provider, call.request.tools)
    if prompt_tokens is not None:
        estimate = Usage(prompt_tokens, estimate.completion_tokens)
    return Outcome(call.id, status, estimate, usage_estimated=True, error_code=code)


def _produced(delta: ChatDelta) -> str:
    """The text a delta says was produced: what a stream cut without usage is charged for."""
    return delta.content + delta.refusal + delta.thinking + "".join(
        (piece.name or "") + piece.arguments for piece in delta.tool_calls)


async def _aclose(stream: AsyncIterator[ChatDelta]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
