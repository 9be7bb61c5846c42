"""Calls to Google's Gemini API / Vertex AI, and their failures turned into our errors.

    transport failures            → as for every adapter (common.providers.http.transport_error):
                                    no connection → retryable, code upstream_unreachable;
                                    no answer in time → UpstreamTimeout (retryable)
    HTTP 408, 429, 5xx            → UpstreamError retryable
    HTTP 401, 403, bad API key    → UpstreamError code upstream_auth (our key is wrong)
    other HTTP 4xx                → UpstreamError code upstream_bad_request
    long-running operation error  → by its google.rpc.Code, see `operation_error`

Google reports an invalid API key as 400 INVALID_ARGUMENT with reason API_KEY_INVALID, so that
case is recognised too. Google's own `error.message` reaches the client (through the job's error)
only when it is about the request (an INVALID_ARGUMENT, a refused prompt), with the key masked, as
for chat (common.providers.http): the text of a 429, a 5xx or a credentials error names the
operator's project or quota, so it goes to the operator's log (`helyx.upstream`) instead.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from common.errors import UpstreamError
from common.providers.http import transport_error
from common.providers.refusal_text import about_the_request
from common.providers.vendor_bodies import NOT_JSON, vendor_message
from common.throttled_log import ThrottledWarnings

log = logging.getLogger("helyx.upstream")
_warnings = ThrottledWarnings(log)

API_KEY_HEADER = "x-goog-api-key"

# google.rpc.Code values where another attempt may succeed: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
# ABORTED, INTERNAL, UNAVAILABLE. Everything else (INVALID_ARGUMENT, FAILED_PRECONDITION, ...)
# would fail the same way again.
RETRYABLE_RPC_CODES = frozenset({4, 8, 10, 13, 14})
AUTH_RPC_CODES = frozenset({7, 16})  # PERMISSION_DENIED, UNAUTHENTICATED


def content_filtered(message: str) -> UpstreamError:
    return UpstreamError(message, retryable=False, code="content_filtered")


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def google_error(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except NOT_JSON:
        return {"message": _short(response.text.strip())}
    if isinstance(body, list) and body:  # some Google fronts wrap the error object in a list
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def is_bad_key(error: dict[str, Any]) -> bool:
    details = error.get("details") or []
    reasons = {d.get("reason") for d in details if isinstance(d, dict)}
    return "API_KEY_INVALID" in reasons or "API key not valid" in str(error.get("message", ""))


def status_error(response: httpx.Response, what: str, api_key: str | None = None) -> UpstreamError:
    """The error for a non-2xx answer from Google."""
    status = response.status_code
    error = google_error(response)
    detail = _short(vendor_message(response.content, api_key) or response.reason_phrase or "no message")
    label = f" {error['status']}" if isinstance(error.get("status"), str) else ""
    message = f"{what} failed: HTTP {status}{label}"
    if status in (401, 403) or (status == 400 and is_bad_key(error)):
        _for_the_operator(what, status, detail)
        return UpstreamError(f"{message}: the provider rejected the gateway's provider credentials; the gateway "
                             "operator must fix the provider key", retryable=False, upstream_status=status,
                             code="upstream_auth")
    if status == 429:
        _for_the_operator(what, status, detail)
        return UpstreamError(message, retryable=True, upstream_status=status, code="upstream_rate_limited")
    if status == 408 or status >= 500:
        _for_the_operator(what, status, detail)
        return UpstreamError(message, retryable=True, upstream_status=status)
    if not about_the_request(status, detail):  # the operator's account or set-up: its log, not the job's message
        _for_the_operator(what, status, detail)
        return UpstreamError(f"{message}; the reason is in the gateway operator's log", retryable=False,
                             upstream_status=status, code="upstream_bad_request")
    return UpstreamError(f"{message}: {detail}", retryable=False, upstream_status=status, code="upstream_bad_request")


def _for_the_operator(what: str, status: int | str, detail: str) -> None:
    _warnings.warning(f"{what} {status}", "%s failed (%s): %s", what, status, detail)


def operation_error(error: dict[str, Any], what: str, api_key: str | None = None) -> UpstreamError:
    """The error for a finished long-running operation that carries `error: {code, message}`."""
    code = error.get("code")
    detail = _short(str(error.get("message") or "no message"))
    if api_key:
        detail = detail.replace(api_key, "***")
    if code in AUTH_RPC_CODES:
        _for_the_operator(what, f"code {code}", detail)
        return UpstreamError(f"{what} failed: the provider rejected the gateway's provider credentials (code {code})",
                             retryable=False, code="upstream_auth")
    if code in RETRYABLE_RPC_CODES:
        _for_the_operator(what, f"code {code}", detail)
        return UpstreamError(f"{what} failed (code {code})", retryable=True)
    if not about_the_request(400, detail):  # the operator's account (billing, project): its log only
        _for_the_operator(what, f"code {code}", detail)
        return UpstreamError(f"{what} failed (code {code}); the reason is in the gateway operator's log",
                             retryable=False)
    return UpstreamError(f"{what} failed: {detail} (code {code})", retryable=False)


def bad_response(what: str, why: str) -> UpstreamError:
    """The answer was 2xx but not what the protocol promises; a new attempt may well differ."""
    return UpstreamError(f"{what}: unexpected answer from the provider: {why}", retryable=True,
                         code="upstream_bad_response")


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {API_KEY_HEADER: api_key} if api_key else {}


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    *,
    what: str,
    api_key: str | None,
    json: dict[str, Any] | None = None,
    timeout: float | None = None,
    return_redirects: bool = False,
) -> httpx.Response:
    """One request; transport failures and non-2xx answers are raised as our errors.

    `timeout` (seconds) overrides the shared client's for slow calls such as image generation.
    With `return_redirects` a 3xx answer is returned, not followed, so the caller can decide
    which headers the next hop may see.
    """
    request_timeout: httpx.Timeout | Any = httpx.USE_CLIENT_DEFAULT
    if timeout is not None:
        request_timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
    try:
        response = await client.request(
            method, url, headers=auth_headers(api_key), json=json, timeout=request_timeout,
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:  # the shared table: aiohttp reports a refused connect as a timeout
        raise transport_error(exc, what) from exc
    if not (response.is_success or (return_redirects and response.is_redirect)):
        raise status_error(response, what, api_key)
    return response


def json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except NOT_JSON as exc:
        raise bad_response(what, "the body is not JSON") from exc
    if not isinstance(body, dict):
        raise bad_response(what, "the body is not a JSON object")
    return body
