"""Response shapes, for the OpenAPI document (the routes render JSON themselves, fast; these
models say exactly what that JSON is, and schemathesis checks every answer against them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Credits = float  # a JSON number: whole credits, or up to six decimals


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str
    param: str | None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class HelyxBlock(BaseModel):
    credits_charged: Credits
    credits_remaining: Credits | None = None
    generation_id: str | None = None
    job_id: str | None = None
    credits_reserved: Credits | None = None


class CreditsView(BaseModel):
    object: Literal["credits"]
    account_id: str
    plan: str
    daily_allowance: Credits
    used_today: Credits = Field(description="charged since the billing day began (allowance and top-up)")
    allowance_remaining: Credits
    topup_balance: Credits
    held: Credits
    remaining: Credits
    resets_at: str


class ChatUsage(BaseModel):
    """What a chat settlement paid for: its generation's tokens."""

    generation_id: str
    model: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class JobUsage(BaseModel):
    """What a media job's settlement paid for."""

    job_id: str
    type: str
    model: str
    status: str


class LedgerEntryView(BaseModel):
    id: int
    object: Literal["ledger.entry"]
    kind: str = Field(description="reserve, settle, release, expire, grant, reset or plan")
    credits: Credits
    held: Credits
    key_id: str | None
    reference: str
    description: str
    created_at: float
    usage: ChatUsage | JobUsage | None = Field(description="on a settlement, release or expiry: the chat call "
                                                           "(generation) or the media job it resolved; else null")


class UsagePage(BaseModel):
    object: Literal["list"]
    data: list[LedgerEntryView]
    has_more: bool
    next_cursor: int | None


class KeyView(BaseModel):
    id: str
    object: Literal["api_key"]
    name: str
    prefix: str
    created_at: float
    last_used_at: float | None
    expires_at: float | None
    revoked_at: float | None
    daily_credit_cap: Credits | None
    daily_credit_cap_remaining: Credits | None = Field(description="what the cap leaves today (billing day)")


class KeyList(BaseModel):
    object: Literal["list"]
    data: list[KeyView]
    has_more: bool
    first_id: str | None
    last_id: str | None


class KeyCreated(BaseModel):
    id: str
    object: Literal["api_key"]
    key: str = Field(description="the secret: shown only in this response")
    name: str
    prefix: str
    created_at: float
    expires_at: float | None
    daily_credit_cap: Credits | None
    daily_credit_cap_remaining: Credits | None = Field(description="what the cap leaves today: all of it")


class KeyRevoked(BaseModel):
    id: str
    object: Literal["api_key"]
    revoked: bool


class Pricing(BaseModel):
    unit: Literal["token", "image", "video"]
    credits: Credits


class ModelView(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    name: str
    description: str
    kind: Literal["chat", "image", "video"]
    pricing: Pricing
    min_plan: str
    available: bool
    simulated: bool


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelView]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: str


class UsageView(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class ChatCompletionUsage(UsageView):
    """The details only where the provider stated them (billing reads the two counts alone)."""

    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class ChatCompletion(BaseModel):
    """With `stream: true` the answer is `text/event-stream` of `chat.completion.chunk` objects,
    a last chunk with `usage` and `helyx`, then `data: [DONE]`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChatChoice]
    usage: ChatCompletionUsage
    helyx: HelyxBlock


class GenerationUsage(UsageView):
    estimated: bool


class GenerationView(BaseModel):
    id: str
    object: Literal["generation"]
    model: str
    key_id: str
    stream: bool
    # succeeded: charged its usage; failed (before its first byte) and interrupted (after it): nothing
    # charged; cancelled (the client left, or the server's shutdown cut the stream): what was produced.
    status: Literal["succeeded", "failed", "interrupted", "cancelled"]
    usage: GenerationUsage
    credits_charged: Credits
    latency_ms: int
    error_code: str | None
    created_at: float


class FileView(BaseModel):
    id: str
    url: str
    content_type: str
    bytes: int


class JobResult(BaseModel):
    files: list[FileView]


class JobError(BaseModel):
    code: str | None
    message: str | None


class JobView(BaseModel):
    id: str
    object: Literal["job"]
    type: Literal["image", "video"]
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    progress: int
    attempts: int
    params: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    result: JobResult | None
    error: JobError | None
    helyx: HelyxBlock


class JobList(BaseModel):
    object: Literal["list"]
    data: list[JobView]
    has_more: bool
    last_id: str | None


class ImageDatum(BaseModel):
    url: str | None = None
    b64_json: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageDatum]
    size: str | None = Field(default=None, description="of the image made, e.g. 1024x1024")
    output_format: str | None = Field(default=None, description="png: the format of the image made")
    helyx: HelyxBlock


class VideoError(BaseModel):
    code: str
    message: str


class VideoView(BaseModel):
    id: str
    object: Literal["video"]
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    created_at: int
    completed_at: int | None
    expires_at: int | None
    seconds: str
    size: str
    prompt: str | None
    remixed_from_video_id: None = None
    error: VideoError | None
    helyx: HelyxBlock


class VideoList(BaseModel):
    object: Literal["list"]
    data: list[VideoView]
    has_more: bool
    first_id: str | None
    last_id: str | None


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"]
    deleted: bool


class WebhookSecret(BaseModel):
    object: Literal["webhook_secret"]
    secret: str


class AccountCreated(BaseModel):
    account_id: str
    api_key: str
    key_id: str
    plan: str


class AccountView(BaseModel):
    id: str
    email: str
    plan: str
    allowance_remaining: Credits
    topup_balance: Credits
    held: Credits
    created_at: float


class AccountList(BaseModel):
    object: Literal["list"]
    data: list[AccountView]
    has_more: bool
    next_cursor: str | None


class GrantResult(CreditsView):
    granted: bool


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


class NotReady(ErrorEnvelope):
    """/readyz's 503: the error envelope, with the checks beside it."""

    status: Literal["unavailable"]
    checks: dict[str, str]


_ERRORS = {
    400: "Invalid request", 401: "Missing, invalid, revoked or expired key", 402: "Insufficient credits",
    403: "The model needs a higher plan", 404: "Not found", 409: "Conflict", 413: "Body too large",
    416: "The byte range starts past the end of the file",
    429: "Rate limited", 500: "Server error", 502: "The provider failed", 503: "Unavailable",
    504: "The provider timed out",
}


def doc(model: type[BaseModel] | None, *errors: int, status: int = 200,
        content_type: str = "application/json") -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: its success model and the error envelope for each error status."""
    responses: dict[int | str, dict[str, Any]] = {}
    if model is not None:
        responses[status] = {"model": model, "description": "Success"}
    elif content_type != "application/json":
        responses[status] = {"description": "Success", "content": {content_type: {}}}
    for code in (*errors, 400, 413, 500):
        responses[code] = {"model": ErrorEnvelope, "description": _ERRORS[code]}
    return responses


def file_doc(*content_types: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a stored-file download: the whole file (200) or one byte range of it (206, 416)."""
    responses = doc(None, 401, 404, 416, content_type=content_types[0])
    responses[200]["content"] = {t: {} for t in content_types}
    responses[206] = {"description": "One byte range of the file (a Range header)",
                      "content": {t: {} for t in content_types}}
    return responses


AUTHED = (401, 429)
