"""MiniMax's failures inside an HTTP 200: `"base_resp": {"status_code": N, "status_msg": "..."}`.

MiniMax answers many failures with HTTP 200 and a status of its own (0 is success), on its native
and its OpenAI-compatible endpoints alike, and may put it in a stream's chunk too. Its error-code
page (platform.minimax.io/docs/api-reference/errorcode) gives each code and what to do; here each
becomes the error the same failure would be as an HTTP status (common.providers.http):

    1000 unknown, 1001 timeout, 1024 internal,     retryable
      1033 system error ("retry later")
    1002 rate limit, 1039 token limit,             retryable, code upstream_rate_limited
      1041 connection limit
    1004 not authorized, 2049 invalid API key      not retryable, code upstream_auth (the operator's key)
    1008 insufficient balance,                     not retryable, code upstream_quota_exhausted
      2056 usage limit exceeded
    1026 the input flagged as sensitive            UpstreamRejectedRequest (a 400, content_policy_violation)
    any other (2013 invalid parameters, ...)       not retryable; the message quoted when it is about the request

Without this, each was "answered without choices" (a 502 upstream_bad_response) whatever it was.
"""

from __future__ import annotations

import logging
from typing import Any

from common.errors import UpstreamError, UpstreamRejectedRequest
from common.providers.refusal_text import about_the_request
from common.providers.vendor_bodies import shown_vendor_text
from common.throttled_log import ThrottledWarnings

log = logging.getLogger("helyx.upstream")
_warnings = ThrottledWarnings(log)
RETRY_LATER = frozenset({1000, 1001, 1024, 1033})
RATE_LIMITED = frozenset({1002, 1039, 1041})
BAD_KEY = frozenset({1004, 2049})
OUT_OF_CREDIT = frozenset({1008, 2056})
INPUT_FLAGGED = 1026


def base_resp_error(data: Any, provider: str, api_key: str | None) -> UpstreamError | None:
    """The error a body's failing `base_resp` stands for, or None (no base_resp, or status 0)."""
    # Any: a JSON value, or None; the code below is an int only when it is a dict.
    status: Any = data.get("base_resp") if isinstance(data, dict) else None
    code = status.get("status_code") if isinstance(status, dict) else None
    if type(code) is not int or code == 0:
        return None
    said = shown_vendor_text(status.get("status_msg") if isinstance(status.get("status_msg"), str) else "", api_key)
    told = f"{provider} status {code}"
    if code in RETRY_LATER or code in RATE_LIMITED:
        _warnings.warning(told, "upstream %s failed (status %d): %s", provider, code, said or "no message")
        return UpstreamError(f"The upstream provider ({provider}) failed (its status {code}); it may be retried",
                             retryable=True, code="upstream_rate_limited" if code in RATE_LIMITED else None)
    if code in BAD_KEY:
        _warnings.warning(told, "upstream %s rejected the gateway's provider key (status %d): %s", provider, code,
                          said or "no message")
        return UpstreamError(f"The upstream provider ({provider}) rejected the gateway's provider credentials "
                             f"(its status {code}); the gateway operator must fix the provider key",
                             code="upstream_auth")
    if code in OUT_OF_CREDIT:
        _warnings.warning(told, "upstream %s: the gateway's provider account is out of balance or quota "
                          "(status %d): %s", provider, code, said or "no message")
        return UpstreamError(f"The upstream provider ({provider}) refused the call: the gateway's account with it "
                             f"is out of quota or credit (its status {code}); the gateway operator must fix it",
                             code="upstream_quota_exhausted")
    _warnings.warning(told, "upstream %s refused a request (status %d): %s", provider, code, said or "no message")
    if code == INPUT_FLAGGED:
        return UpstreamRejectedRequest(f"The upstream provider ({provider}) refused the request: its content "
                                       f"filter flagged the input (its status {code})", upstream_status=200,
                                       code="content_policy_violation", param="messages")
    message = f"The upstream provider ({provider}) refused the request (its status {code})"
    if said and about_the_request(400, said):
        message += f": {said}"
    return UpstreamError(message)
