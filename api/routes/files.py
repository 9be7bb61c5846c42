"""GET /api/v1/files/{id}/content: a stored result, by signed URL (no header) or with the key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from api.deps import ServicesDep, authenticate
from api.responses import stored_file_response
from api.schemas.responses import file_doc
from common import clock
from common.errors import AuthenticationFailed, NotFound
from common.jobs.views import find_file
from common.signing import expiry_of, verify_file_signature

router = APIRouter(prefix="/api/v1", tags=["files"])
_FILE_RESPONSES = file_doc("image/png", "image/jpeg", "image/webp", "video/mp4")


@router.head("/files/{file_id}/content", include_in_schema=False)  # HEAD undocumented: one operationId
@router.get("/files/{file_id}/content", response_class=StreamingResponse,
            summary="A stored result file; signed URLs need no Authorization", responses=_FILE_RESPONSES)
async def file_content(file_id: str, request: Request, services: ServicesDep,
                       expires: str | None = None, signature: str | None = None) -> Any:
    now = int(clock.now().timestamp())
    signed = signature is not None and verify_file_signature(file_id, expires, signature,
                                                             services.signing_secret, now)
    if signature is not None and not signed and "authorization" not in request.headers:
        raise _refused_link(expires, now)  # an <img> user's answer: the link, not a missing key
    # The caller is judged before the file is looked up: without a valid signature or key the
    # answer is 401 whether or not the file exists, so ids cannot be probed.
    principal = None if signed else await authenticate(request, services)
    stored = await run_in_threadpool(find_file, services.engine, file_id)
    if principal is not None and principal.account_id != stored["account_id"]:
        raise NotFound(f"No file {file_id}", code="file_not_found", param="id")
    return stored_file_response(services.storage, stored, {"cache-control": "private, max-age=300"}, request)


def _refused_link(expires: str | None, now: int) -> AuthenticationFailed:
    expires_at = expiry_of(expires)
    if expires_at is not None and expires_at <= now:
        return AuthenticationFailed("This file link has expired: fetch the job (or video) again for a fresh "
                                    "link, or send the owner's API key.", code="expired_link")
    return AuthenticationFailed("This file link's signature is not valid: use the link exactly as the job "
                                "gave it, or send the owner's API key.", code="invalid_signature")
