"""Responses: fast JSON (orjson) on every route, and stored result files (whole or one byte range)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.byte_ranges import requested_range
from api.json_bytes import json_bytes
from common.errors import NotFound
from common.storage import Storage


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(content, status_code=status, headers=headers)


def stored_file_response(storage: Storage, stored: Mapping[str, Any], headers: dict[str, str],
                         request: Request) -> Response:
    """A stored result file, streamed: whole, or the one byte range a GET asks for (206, see
    api.byte_ranges), or nothing for a copy the caller already has (304); a HEAD gets the headers
    only, nothing read. Its bytes can be gone while its
    row remains (the expiry sweep deletes the bytes first; an operator may clear the disk): 404,
    not a 500."""
    not_stored = NotFound(f"The content of file {stored['id']} is no longer stored.", code="file_not_found",
                          param="id")
    size = int(stored["bytes"])
    etag = f'"{stored["id"]}"'  # a file's bytes never change under its id: a strong validator
    # nosniff: a browser takes the stored type as given (an image or a video), never guesses HTML from the bytes
    headers = {"content-length": str(size), "x-content-type-options": "nosniff", "accept-ranges": "bytes",
               "etag": etag, **headers}
    if _names(request.headers.get("if-none-match"), etag):  # the caller's copy is this file: 304, no body
        return Response(status_code=304, headers={k: v for k, v in headers.items() if k != "content-length"})
    if request.method == "HEAD":
        if not storage.exists(stored["storage_key"]):
            raise not_stored
        return Response(media_type=stored["content_type"], headers=headers)
    part = requested_range(request.headers.get("range"), request.headers.get("if-range"), etag, size)
    if part is not None:
        headers.update({"content-length": str(part.length), "content-range": part.content_range})
    try:  # opens the file now
        chunks = storage.iter_chunks(stored["storage_key"], start=part.start if part else 0,
                                     length=part.length if part else None)
    except FileNotFoundError:
        raise not_stored from None
    return StreamingResponse(chunks, status_code=206 if part else 200, media_type=stored["content_type"],
                             headers=headers)


def _names(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header lists `etag` (weak comparison, as RFC 9110 has it for this header) or is "*"."""
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags
