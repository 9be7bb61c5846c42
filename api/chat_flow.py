"""A chat completion from request to response (SPEC §3, §4): validate, plan gate, reserve, call
the provider (retried only before the first byte), settle, answer — plain here, streamed in
api.chat_stream."""

from __future__ import annotations

import secrets
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from api import chat_admission, chat_stream
from api.chat_admission import Admission
from api.chat_call import ChatCall
from api.responses import json_response
from api.schemas.chat import ChatCompletionRequest
from api.services import Services
from common import chat_billing, clock
from common.catalog import WITHHOLDABLE
from common.chat_billing import Outcome
from common.errors import HelyxError
from common.providers.base import ChatRequest
from common.providers.messages import tool_calls_text
from common.providers.retry import call_with_retries
from common.providers.simulated import SYSTEM_FINGERPRINT
from common.tokens import estimate_prompt_tokens


async def create_completion(services: Services, request: Request, body: ChatCompletionRequest,
                            log_fields: dict[str, Any]) -> Response:
    log_fields["model"] = body.model  # a refusal (403, 402) names it too; the settlement sets it again
    messages = body.message_dicts()
    call_id = "chatcmpl-" + secrets.token_hex(12)
    prompt_estimate = estimate_prompt_tokens(messages, image_tokens=services.catalog.image_tokens_for(body.model),
                                             tools=body.sent_tools, tool_choice=body.sent_tool_choice,
                                             response_format=body.sent_response_format,
                                             reasoning=services.catalog.replays_reasoning(body.model))
    admission = await chat_admission.admit(services, request, body, messages, prompt_estimate=prompt_estimate,
                                           purpose=f"chat:{call_id}")
    try:
        return await _counted(services, request, admission, body, messages, call_id, prompt_estimate, log_fields)
    except HelyxError as exc:  # a refusal of a counted request still says what the key has left
        exc.headers = {**admission.rate_headers, **exc.headers}
        raise


async def _counted(services: Services, request: Request, admission: Admission, body: ChatCompletionRequest,
                   messages: list[dict[str, Any]], call_id: str, prompt_estimate: int,
                   log_fields: dict[str, Any]) -> Response:
    settings, principal = services.settings, admission.principal
    started = clock.now().timestamp()
    reservation = admission.reservation
    try:
        entry = services.catalog.resolve(body.model, principal.plan, settings, kind="chat")
        provider = chat_admission.servable_by(services, entry, body, messages)  # before reserving
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
                                       for name in WITHHOLDABLE if name != "temperature"},
                    temperature=entry.upstream_temperature(body.temperature), tools=body.sent_tools,
                    tool_choice=body.sent_tool_choice, response_format=body.sent_response_format,
                    parallel_tool_calls=body.parallel_tool_calls if body.tools else None),
        reservation, call_id, int(started), started,
        SYSTEM_FINGERPRINT if services.providers.is_simulated(entry) else None, admission.rate_headers, log_fields,
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
    )
    call.keep_hold()
    try:
        return await (chat_stream.stream(call, request) if body.stream else _complete(call))
    except HelyxError as exc:  # a failed call is recorded: its error says where (GET /generations/{id})
        exc.headers = {**exc.headers, "x-generation-id": call.id}
        raise


async def _complete(call: ChatCall) -> Response:
    settings = call.services.settings
    result = await call.upstream("complete", lambda: call_with_retries(
        lambda: call.provider.complete(call.request), retries=settings.upstream_retries,
        backoff=settings.upstream_backoff_seconds), stream=False)
    usage, estimated = result.usage, False
    if usage is None:
        produced = result.content + (result.refusal or "") + (result.reasoning or "") + tool_calls_text(
            result.tool_calls)
        usage, estimated = chat_billing.estimated_usage(call.request.messages, produced, call.provider,
                                                        call.request.tools), True
    with anyio.CancelScope(shield=True):
        settlement = await call.finish(Outcome(call.id, "succeeded", usage, usage_estimated=estimated), stream=False)
    # A refusal has no content, as at OpenAI; nor have tool calls without text
    contentless = (result.refusal is not None or result.tool_calls) and not result.content
    message: dict[str, Any] = {"role": "assistant", "content": None if contentless else result.content,
                               "refusal": result.refusal}
    if result.tool_calls:
        message["tool_calls"] = [tool_call.openai_view() for tool_call in result.tool_calls]
    if result.reasoning is not None:  # DeepSeek's and Moonshot's name; the SDK keeps it on the message
        message["reasoning_content"] = result.reasoning
    return json_response({
        "id": call.id, "object": "chat.completion", "created": call.created, "model": call.entry.id,
        "system_fingerprint": result.system_fingerprint or call.fingerprint,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": usage.openai_view(),
        "helyx": {**chat_billing.helyx_block(settlement), "generation_id": call.id},
    }, headers=call.headers)
