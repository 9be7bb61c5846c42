"""One error hierarchy; the API renders every one of them as the OpenAI error envelope.

    HelyxError                      status  type
    ├── InvalidRequest              400     invalid_request_error
    ├── AuthenticationFailed        401     authentication_error
    ├── InsufficientCredits         402     insufficient_quota
    ├── PermissionDenied            403     permission_error
    ├── NotFound                    404     not_found_error
    │   └── ModelNotFound           404     not_found_error (code model_not_found / model_offline)
    ├── MethodNotAllowed            405     invalid_request_error
    ├── Conflict                    409     conflict_error
    ├── PayloadTooLarge             413     invalid_request_error
    ├── RangeNotSatisfiable         416     invalid_request_error
    ├── RateLimited                 429     rate_limit_error
    ├── ServerError                 500     server_error
    ├── ServiceUnavailable          503     server_error
    │   └── ChargeUnconfirmed       503     server_error (code charge_unconfirmed, not retried)
    ├── JobAnswerFailed             5xx     server_error (code job_answer_failed, not retried)
    ├── JobUnconfirmed              503     server_error (code job_unconfirmed, not retried)
    └── UpstreamError               502     upstream_error
        ├── UpstreamTimeout         504     upstream_error
        └── UpstreamRejectedRequest 400     invalid_request_error (the vendor's code and param, if any)

`client_may_retry` (`retryable`, but for upstream errors) decides the `x-should-retry` header: the
OpenAI SDK must not retry an error that a retry cannot mend. Provider adapters raise
`UpstreamError` with `retryable` telling the shared retry loop whether another attempt may help
(connection errors, 429, 5xx). An `UpstreamError` that reaches a client always says
`x-should-retry: false`: the gateway has already retried it as far as its settings allow, and the
SDK's own retries would multiply the provider calls (3 x 3).
"""

from __future__ import annotations


class HelyxError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    @property
    def client_may_retry(self) -> bool:
        """Whether the `x-should-retry` header lets the OpenAI SDK retry: a retry may mend it."""
        return self.retryable

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class InvalidRequest(HelyxError):
    status, type, code, retryable = 400, "invalid_request_error", "invalid_request", False


class AuthenticationFailed(HelyxError):
    status, type, code, retryable = 401, "authentication_error", "invalid_api_key", False


class InsufficientCredits(HelyxError):
    status, type, code, retryable = 402, "insufficient_quota", "insufficient_quota", False


class PermissionDenied(HelyxError):
    status, type, code, retryable = 403, "permission_error", "plan_required", False


class NotFound(HelyxError):
    status, type, code, retryable = 404, "not_found_error", "not_found", False


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(HelyxError):
    status, type, code, retryable = 405, "invalid_request_error", "method_not_allowed", False


class Conflict(HelyxError):
    status, type, code, retryable = 409, "conflict_error", "idempotency_conflict", False


class PayloadTooLarge(HelyxError):
    status, type, code, retryable = 413, "invalid_request_error", "payload_too_large", False


class RangeNotSatisfiable(HelyxError):
    status, type, code, retryable = 416, "invalid_request_error", "range_not_satisfiable", False


class RateLimited(HelyxError):
    status, type, code, retryable = 429, "rate_limit_error", "rate_limit_exceeded", True


class ServerError(HelyxError):
    status, type, code, retryable = 500, "server_error", "internal_error", True


class ServiceUnavailable(HelyxError):
    status, type, code, retryable = 503, "server_error", "service_unavailable", True


class ChargeUnconfirmed(ServiceUnavailable):
    """A call's answer was produced but its settlement could not be confirmed (the database went
    away, perhaps after committing it). Not to be retried blindly: a retry is a second call."""

    code, retryable = "charge_unconfirmed", False

    def __init__(self, generation_id: str) -> None:
        super().__init__(
            f"The answer was produced but its charge could not be confirmed: the gateway's database is "
            f"unavailable. GET /api/v1/generations/{generation_id} shows the charge once it is recorded; if no "
            "record appears, nothing is charged (the reservation is released at its expiry).")
        self.generation_id = generation_id


class JobAnswerFailed(HelyxError):
    """A media job was made, its credits held, but the answer to the request that made it failed
    (the database or the file storage went away while it waited, or the shutdown cut it). Not to
    be retried unless the request carried an Idempotency-Key (`idempotent`): the SDK sends none
    of its own, so its retry would make, and charge, a second job; with the caller's key, which the
    SDK sends again on its retries, a retry returns this job. `status`: 503 for the database or a
    shutdown, 500 otherwise."""

    type, code = "server_error", "job_answer_failed"

    def __init__(self, job_id: str, job_type: str, *, status: int, reason: str, idempotent: bool = False) -> None:
        then = ("Sending the request again with the same Idempotency-Key returns it." if idempotent else
                "Sending the request again without an Idempotency-Key makes, and charges, a second job.")
        super().__init__(
            f"The {job_type} job {job_id} was made (and is charged once, if it succeeds), but this answer failed "
            f"({reason}). GET /api/v1/jobs/{job_id} gives its state. {then}")
        self.status, self.retryable, self.job_id = status, idempotent, job_id


class JobUnconfirmed(HelyxError):
    """A media job's submission whose outcome is unknown: the database did not confirm its
    statement (the reply was lost: it may have committed), or the server's shutdown cut the
    request while it was in flight. Not to be retried blindly, unless the request carried an
    Idempotency-Key (`idempotent`: a retry then returns the job if it was made, or makes it)."""

    status, type, code = 503, "server_error", "job_unconfirmed"

    def __init__(self, job_id: str, job_type: str, reason: str, *, idempotent: bool = False) -> None:
        then = ("Send the request again with the same Idempotency-Key: it returns the job if it was made, "
                "charged once, or makes it." if idempotent else
                f"GET /api/v1/jobs/{job_id} tells: a job that exists runs and is charged once; a 404 that lasts a "
                "minute means nothing was made or charged, and the request can be sent again.")
        super().__init__(f"The {job_type} job {job_id} may or may not have been made: {reason}. {then}")
        self.retryable, self.job_id = idempotent, job_id


class UpstreamError(HelyxError):
    """The provider failed. `retryable` is for our own retry loop before the first byte."""

    status, type, code = 502, "upstream_error", "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        upstream_status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable
        self.upstream_status = upstream_status

    @property
    def client_may_retry(self) -> bool:
        """Never: the gateway has retried it already as far as its settings allow (module docstring)."""
        return False


class UpstreamTimeout(UpstreamError):
    status, code = 504, "upstream_timeout"

    def __init__(self, message: str = "The provider did not answer in time") -> None:
        super().__init__(message, retryable=True)


class UpstreamRejectedRequest(UpstreamError):
    """The provider refused the request itself in a way the client can mend (a body too large, a
    context too long: common.providers.http.client_fault), so a 400 as OpenAI would answer it,
    with the vendor's code and param when it names them (OpenAI-compatible vendors do)."""

    status, type, code = 400, "invalid_request_error", "upstream_invalid_request"

    def __init__(self, message: str, *, upstream_status: int, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message, retryable=False, upstream_status=upstream_status, code=code)
        self.param = param
