"""A chat completion from request to response (SPEC §3, §4): validate, plan gate, reserve, call
the provider (retried only before the first byte), settle, answer — plain or streamed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api import chat_admission
from api.chat_admission import Admission
from api.responses import json_response
from api.schemas.chat import ChatCompletionRequest
from api.services import Services
from api.sse import SSE_DONE, EventStreamResponse, StreamEnd, sse_data
from common import billing, chat_billing, clock, ledger
from common.accounts import Principal
from common.catalog import WITHHOLDABLE, ModelEntry
from common.chat_billing import Outcome, Reservation
from common.errors import (
    ChargeUnconfirmed,
    HelyxError,
    NotFound,
    ServerError,
    ServiceUnavailable,
    UpstreamError,
)
from common.ledger import Settlement
from common.metrics import UPSTREAM_ERRORS, UPSTREAM_LATENCY
from common.money import MICRO
from common.providers.base import ChatDelta, ChatProvider, ChatRequest, Usage
from common.providers.retry import call_with_retries, open_stream_with_retries
from common.providers.simulated import SYSTEM_FINGERPRINT
from common.retrying import DATABASE_DOWN, while_database_down_async
from common.tokens import estimate_prompt_tokens

log = logging.getLogger("helyx.api")
SETTLE_PATIENCE_SECONDS = 15.0  # ride out a database restart rather than leave the hold to its TTL
MAX_KEPT_SECONDS = 6 * 3600  # a hold is never kept alive longer, whatever happens to its call
SERVER_SHUTDOWN = "server_shutdown"  # a stream cut at the end of the shutdown grace
SETTLE_RETRY_SECONDS = 0.1  # a client is waiting: notice the database's return at once (a refused connect is cheap)


@dataclass
class ChatCall:
    """Everything one call needs once it has been priced and reserved."""

    services: Services
    principal: Principal
    entry: ModelEntry
    provider: ChatProvider
    request: ChatRequest
    reservation: Reservation
    id: str
    created: int
    started: float
    fingerprint: str | None
    headers: dict[str, str]
    log_fields: dict[str, Any]
    include_usage: bool = False  # stream_options.include_usage: the usage in a chunk of its own
    _keeper: asyncio.TimerHandle | None = field(default=None, repr=False)
    _extending: asyncio.Task[None] | None = field(default=None, repr=False)
    _since: float = field(default=0.0, repr=False)

    def keep_hold(self) -> None:
        """A call may outlive its hold's TTL (a long stream): the sweeper would then release the
        hold mid-call and the settlement find nothing to charge. Every third of the TTL, while
        the call runs, the hold's expiry moves on. A timer, not a task: a short call pays ~nothing.
        A process that dies stops renewing, and the hold is released at its expiry as before."""
        interval = self.services.settings.hold_ttl_seconds / 3
        self._since = time.monotonic()
        self._keeper = asyncio.get_running_loop().call_later(interval, self._extend_soon, interval)

    def _extend_soon(self, interval: float) -> None:
        self._extending = asyncio.ensure_future(self._extend(interval))

    async def _extend(self, interval: float) -> None:
        until = clock.now().timestamp() + self.services.settings.hold_ttl_seconds
        try:
            pg = self.services.pg
            if pg is not None:
                still_open = await chat_billing.extend_hold_async(pg, self.reservation.hold_id, until)
            else:
                still_open = await run_in_threadpool(self._extend_sync, until)
        except Exception as exc:  # noqa: BLE001 - the database is away: try again at the next beat
            log.warning("chat %s: its hold's expiry could not be moved on (%s)", self.id, type(exc).__name__)
            still_open = True
        if still_open and self._keeper is not None and time.monotonic() - self._since < MAX_KEPT_SECONDS:
            self._keeper = asyncio.get_running_loop().call_later(interval, self._extend_soon, interval)

    def _extend_sync(self, until: float) -> bool:
        with self.services.engine.begin() as conn:
            return ledger.extend_hold(conn, self.reservation.hold_id, until)

    async def finish(self, outcome: Outcome, stream: bool) -> Any:
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        try:
            settlement = await while_database_down_async(lambda: self._settle(outcome, stream),
                                                         patience=SETTLE_PATIENCE_SECONDS,
                                                         max_delay=SETTLE_RETRY_SECONDS)
        except DATABASE_DOWN as exc:
            if outcome.costs_nothing:  # a release: nothing is charged, whether it committed or not
                raise
            log.warning("chat %s: settlement unconfirmed (%s); its hold is released at expiry unless it "
                        "committed", self.id, type(exc).__name__)
            raise ChargeUnconfirmed(self.id) from exc
        usage = outcome.usage
        self.log_fields.update(
            model=self.entry.id, generation_id=self.id, outcome=outcome.status, credits=settlement.charged / MICRO,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )
        if settlement.available is None:  # resolved before (a retry after a lost reply): say what is left now
            left = await run_in_threadpool(billing.available, self.services.engine, self.principal.account_id)
            settlement = dataclasses.replace(settlement, available=left)
        return settlement

    async def _settle(self, outcome: Outcome, stream: bool) -> Settlement:
        """One statement on the event loop in the common case; the transactional verbs otherwise."""
        try:
            return await self._settle_hold(outcome, stream)
        except NotFound as exc:
            if exc.code != "hold_not_found":
                raise
            # The reservation committed without waiting for the flush (common.ledger_pg) and
            # PostgreSQL crashed before flushing it: there is nothing to settle or to charge.
            log.warning("chat %s: its hold %s is gone (lost in a database crash?); nothing charged",
                        self.id, self.reservation.hold_id)
            raise ServiceUnavailable("The database restarted and lost this request's reservation; nothing was "
                                     "charged. Please retry.") from None

    async def finish_or_log(self, outcome: Outcome, stream: bool) -> Settlement | None:
        """`finish` where nobody may be left to tell (the client has gone, or the server cut the
        stream): a failure is logged, and None returned. The hold, if it still exists, is released
        at its expiry, so nothing is charged."""
        try:
            return await self.finish(outcome, stream)
        except Exception:
            log.exception("chat %s: the settlement failed after the stream was cut; nothing charged", self.id)
            return None

    async def _settle_hold(self, outcome: Outcome, stream: bool) -> Settlement:
        pg = self.services.pg
        day = billing.today(self.services.settings.timezone)
        if pg is not None:
            settled = await chat_billing.finish_chat_async(pg, self.principal, self.entry, self.reservation, outcome,
                                                           stream=stream, started=self.started, day=day)
            if settled is not None:
                return settled
        return await run_in_threadpool(lambda: chat_billing.finish_chat(
            self.services.engine, self.principal, self.entry, self.reservation, outcome, stream=stream,
            started=self.started, day=day))

    def upstream_done(self, since: float, kind: str, error: BaseException | None = None) -> None:
        # A simulated answer (a fingerprint is set only then) is not a call to the catalog's provider:
        # counted apart, it cannot flatter that provider's latency or hide its errors.
        provider = "simulated" if self.fingerprint is not None else self.entry.provider
        UPSTREAM_LATENCY.labels(provider, kind).observe(time.perf_counter() - since)
        if error is not None:
            UPSTREAM_ERRORS.labels(provider, _code(error)).inc()

    def chunk(self, delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> bytes:
        return sse_data({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.entry.id,
            "system_fingerprint": self.fingerprint,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra,
        })


async def create_completion(services: Services, request: Request, body: ChatCompletionRequest,
                            log_fields: dict[str, Any]) -> Response:
    log_fields["model"] = body.model  # a refusal (403, 402) names it too; the settlement sets it again
    messages = body.message_dicts()
    call_id = "chatcmpl-" + secrets.token_hex(12)
    prompt_estimate = estimate_prompt_tokens(messages)
    admission = await chat_admission.admit(services, request, body, messages, prompt_estimate=prompt_estimate,
                                           purpose=f"chat:{call_id}")
    try:
        return await _counted(services, admission, body, messages, call_id, prompt_estimate, log_fields)
    except HelyxError as exc:  # a refusal of a counted request still says what the key has left
        exc.headers = {**admission.rate_headers, **exc.headers}
        raise


async def _counted(services: Services, admission: Admission, body: ChatCompletionRequest,
                   messages: list[dict[str, Any]], call_id: str, prompt_estimate: int,
                   log_fields: dict[str, Any]) -> Response:
    settings, principal = services.settings, admission.principal
    started = clock.now().timestamp()
    reservation = admission.reservation
    try:
        entry = services.catalog.resolve(body.model, principal.plan, settings, kind="chat")
        entry.refuse_unsupported(body.given)
        provider = services.providers.chat(entry)  # before reserving: a provider that cannot be built holds nothing
    except BaseException:
        if reservation is not None:  # made at once, on checks these repeat: never expected to happen
            await chat_admission.release(services, reservation.hold_id)
        raise
    if reservation is None and services.pg is not None and not admission.tried_at_once:  # on the event loop
        reservation = await chat_billing.reserve_chat_async(
            services.pg, principal, entry, prompt_estimate=prompt_estimate, max_tokens=body.requested_max_tokens,
            default_max_tokens=settings.default_max_tokens, purpose=f"chat:{call_id}",
            ttl=settings.hold_ttl_seconds,
        )
    if reservation is None:  # SQLite, a capped key, a daily reset, or a balance short of the whole hold (shrink or 402)
        reservation = await run_in_threadpool(
            lambda: chat_billing.reserve_chat(
                services.engine, principal, entry, prompt_estimate=prompt_estimate,
                max_tokens=body.requested_max_tokens, default_max_tokens=settings.default_max_tokens,
                purpose=f"chat:{call_id}", ttl=settings.hold_ttl_seconds, tz=settings.timezone,
                max_tokens_field=body.max_tokens_field,
            )
        )
    call = ChatCall(
        services, principal, entry, provider,
        ChatRequest(model=entry.upstream_model, messages=messages, max_tokens=reservation.max_tokens,
                    user=body.user, **{name: None if name in entry.withheld else getattr(body, name)
                                       for name in WITHHOLDABLE}),
        reservation, call_id, int(started), started,
        SYSTEM_FINGERPRINT if services.providers.is_simulated(entry) else None, admission.rate_headers, log_fields,
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
    )
    call.keep_hold()
    return await (_stream(call) if body.stream else _complete(call))


async def _complete(call: ChatCall) -> Response:
    settings = call.services.settings
    since = time.perf_counter()
    try:
        result = await call_with_retries(lambda: call.provider.complete(call.request),
                                         retries=settings.upstream_retries, backoff=settings.upstream_backoff_seconds)
        call.upstream_done(since, "complete")
    except BaseException as exc:
        call.upstream_done(since, "complete", exc)
        with anyio.CancelScope(shield=True):
            await call.finish(Outcome(call.id, "failed", None, error_code=_code(exc)), stream=False)
        raise
    usage, estimated = result.usage, False
    if usage is None:
        usage, estimated = chat_billing.estimated_usage(call.request.messages, result.content, call.provider), True
    with anyio.CancelScope(shield=True):
        settlement = await call.finish(Outcome(call.id, "succeeded", usage, usage_estimated=estimated), stream=False)
    return json_response({
        "id": call.id, "object": "chat.completion", "created": call.created, "model": call.entry.id,
        "system_fingerprint": result.system_fingerprint or call.fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.content, "refusal": None},
                     "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": usage.openai_view(),
        "helyx": {**chat_billing.helyx_block(settlement), "generation_id": call.id},
    }, headers=call.headers)


async def _stream(call: ChatCall) -> Response:
    settings = call.services.settings
    since = time.perf_counter()
    try:
        first, stream = await open_stream_with_retries(
            lambda: call.provider.stream(call.request), retries=settings.upstream_retries,
            backoff=settings.upstream_backoff_seconds,
        )
        call.upstream_done(since, "stream_first_chunk")
    except BaseException as exc:
        call.upstream_done(since, "stream_first_chunk", exc)
        with anyio.CancelScope(shield=True):
            await call.finish(Outcome(call.id, "failed", None, error_code=_code(exc)), stream=True)
        raise
    end = StreamEnd()

    async def abandoned() -> None:
        await _aclose(stream)
        await _cut_off(call, end, None, first.usage, [first.content], first.prompt_tokens)

    return EventStreamResponse(_events(call, first, stream, end), headers=call.headers, on_unstarted=abandoned,
                               end=end)


async def _events(call: ChatCall, first: ChatDelta, stream: AsyncIterator[ChatDelta],
                  end: StreamEnd) -> AsyncIterator[bytes]:
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
                produced.append(delta.content)
                usage = delta.usage or usage
                prompt_tokens = delta.prompt_tokens if delta.prompt_tokens is not None else prompt_tokens
                if delta.content or delta.finish_reason or not role_sent:
                    payload: dict[str, Any] = {"content": delta.content} if delta.content or role_sent else {}
                    if not role_sent:
                        payload = {"role": "assistant", "content": delta.content}
                        role_sent = True
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
        last = {"usage": outcome.usage.openai_view() if outcome.usage else None,
                "helyx": {**chat_billing.helyx_block(settlement), "generation_id": call.id}}
        if held is not None:
            yield call.chunk(*held, **last)
        else:
            yield sse_data({
                "id": call.id, "object": "chat.completion.chunk", "created": call.created, "model": call.entry.id,
                "system_fingerprint": call.fingerprint, "choices": [], **last,
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
        await call.finish_or_log(_stream_outcome(call, "cancelled", usage, produced, "client_disconnected",
                                                 prompt_tokens), True)
        return
    cut = stopped_by is None or isinstance(stopped_by, (asyncio.CancelledError, GeneratorExit))
    status, code = ("cancelled", SERVER_SHUTDOWN) if cut else ("interrupted", "internal_error")
    settlement = await call.finish_or_log(_stream_outcome(call, status, usage, produced, code, prompt_tokens), True)
    message = ("The server is shutting down and cut this stream off before its end; what it produced is charged. "
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
    estimate = chat_billing.estimated_usage(call.request.messages, "".join(produced), call.provider)
    if prompt_tokens is not None:
        estimate = Usage(prompt_tokens, estimate.completion_tokens)
    return Outcome(call.id, status, estimate, usage_estimated=True, error_code=code)


async def _aclose(stream: AsyncIterator[ChatDelta]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def _code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, HelyxError) else type(exc).__name__

