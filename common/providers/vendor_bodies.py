"""What a vendor's answer says about itself: its error body's message, code, param and quota
verdict, the wait it asks for (headers or Google's RetryInfo), and its JSON parsed without ever
raising anything but our UpstreamError. common.providers.http turns these into our errors."""

from __future__ import annotations

import json
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from common.errors import UpstreamError

MAX_VENDOR_MESSAGE = 500
# What json.loads raises for a body that is not JSON: ValueError, and RecursionError for one nested
# deeper than the interpreter's stack (a misbehaving proxy's `[[[[...`): a vendor's body, never a 500
NOT_JSON = (ValueError, RecursionError)
_VENDOR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)s")
# OpenAI's 429s that are about billing, not about a rate: a retry cannot help (its error-codes
# page: "You exceeded your current quota, please check your plan and billing details")
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "credit_balance_exhausted",
                          "organization_spend_limit_exceeded", "project_spend_limit_exceeded"})


def parse_json(raw: str | bytes, provider: str) -> Any:
    try:
        return json.loads(raw)
    except NOT_JSON as exc:
        raise UpstreamError(f"The upstream provider ({provider}) sent malformed JSON",
                            code="upstream_bad_response") from exc


def json_or_none(raw: str | bytes) -> Any:
    """The JSON value of `raw`, or None when it is none (or empty)."""
    try:
        return json.loads(raw) if raw else None
    except NOT_JSON:
        return None


def shown_vendor_text(text: str, api_key: str | None) -> str:
    """A vendor's words as they may be logged or quoted: the provider key masked, whitespace
    collapsed, at most MAX_VENDOR_MESSAGE characters."""
    if api_key:
        text = text.replace(api_key, "***")
    return " ".join(text.split())[:MAX_VENDOR_MESSAGE]


def _error_object(body: bytes) -> dict[str, Any] | None:
    """The `error` object of a JSON error body ({"error": {...}}), or None."""
    data = json_or_none(body)
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def vendor_code_and_param(body: bytes) -> tuple[str | None, str | None]:
    """An OpenAI-style error body's `code` (such as context_length_exceeded) and `param`, when sane."""
    error = _error_object(body)
    if error is None:
        return None, None
    code, param = error.get("code"), error.get("param")
    return (code if isinstance(code, str) and _VENDOR_CODE.fullmatch(code) else None,
            param if isinstance(param, str) and 0 < len(param) <= 100 and param.isprintable() else None)


def out_of_quota(body: bytes) -> bool:
    """A 429 body saying the operator's account has no quota or credit left (its `error.type` or
    `error.code`), which is not a rate limit: the same call fails until someone pays."""
    error = _error_object(body)
    return error is not None and any(isinstance(value, str) and value in _QUOTA_CODES
                                     for value in (error.get("type"), error.get("code")))


def google_retry_delay(body: bytes) -> float | None:
    """The wait a Google error body states (google.rpc.RetryInfo `retryDelay`, a duration such as
    "38s"); Gemini says it there, not in Retry-After."""
    error = _error_object(body)
    details = error.get("details") if error is not None else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and (match := _DURATION.fullmatch(delay.strip())):
                return float(match.group(1))
    return None


def vendor_message(body: bytes, api_key: str | None) -> str:
    """The message of a vendor error body ({"error": {"message": ...}} for OpenAI, Anthropic and
    Gemini alike; Gemini sometimes wraps it in a list), else the trimmed text; key masked."""
    text = body.decode("utf-8", "replace").strip()
    data = json_or_none(text)
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(error, str):
            text = error
    return shown_vendor_text(text, api_key)


def retry_after_seconds(headers: httpx.Headers | dict[str, str]) -> float | None:
    """Retry-After (seconds or an HTTP date) or OpenAI's retry-after-ms, as seconds."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if (ms := lowered.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
