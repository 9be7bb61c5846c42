"""Fast JSON responses (orjson) used on every route."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse

from common.errors import NotFound
from common.storage import Storage


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(content, status_code=status, headers=headers)


def stored_file_response(storage: Storage, stored: Mapping[str, Any], headers: dict[str, str],
                         head: bool = False) -> Response:
    """A stored result file, streamed (`head`: its headers only, nothing read). Its bytes can be
    gone while its row remains (the expiry sweep deletes the bytes first; an operator may clear
    the disk): 404, not a 500."""
    not_stored = NotFound(f"The content of file {stored['id']} is no longer stored.", code="file_not_found",
                          param="id")
    # nosniff: a browser takes the stored type as given (an image or a video), never guesses HTML from the bytes
    headers = {"content-length": str(stored["bytes"]), "x-content-type-options": "nosniff", **headers}
    if head:
        if not storage.exists(stored["storage_key"]):
            raise not_stored
        return Response(media_type=stored["content_type"], headers=headers)
    try:
        chunks = storage.iter_chunks(stored["storage_key"])  # opens the file now
    except FileNotFoundError:
        raise not_stored from None
    return StreamingResponse(chunks, media_type=stored["content_type"], headers=headers)
