"""The one byte range a download asks for (RFC 9110 §14): how a video player seeks and how a broken
download resumes. Browsers will not seek an MP4 (Safari will not even play one) from a server that
answers every request with the whole file.

Chosen behaviour: one range (`bytes=a-b`, `bytes=a-`, `bytes=-n`) is answered with 206; several
ranges, another unit, a malformed header or an `If-Range` that does not name the file's ETag get the
whole file (200), as the RFC allows a server that ignores Range; a range that starts past the end,
or `bytes=-0`, is 416. Only GET honours Range: HEAD answers with the whole file's headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import RangeNotSatisfiable

# Positions of any length a header may carry (bounded only so that int() never parses thousands of digits)
_ONE_RANGE = re.compile(r"bytes=[ \t]*(?:([0-9]{1,64})-([0-9]{0,64})|-([0-9]{1,64}))[ \t]*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive, as Content-Range writes it
    size: int  # the whole file's

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


def requested_range(range_header: str | None, if_range: str | None, etag: str, size: int) -> ByteRange | None:
    """The range to send, or None for the whole file; raises RangeNotSatisfiable (416) for a
    range that starts at or past `size`, or the empty suffix `bytes=-0`."""
    if range_header is None or size <= 0 or (if_range is not None and if_range.strip() != etag):
        return None
    match = _ONE_RANGE.fullmatch(range_header.strip())
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        if int(suffix) == 0:
            raise _unsatisfiable(size)
        return ByteRange(max(0, size - int(suffix)), size - 1, size)
    start = int(first)
    if last and int(last) < start:
        return None  # an invalid range-spec: the header is ignored
    if start >= size:
        raise _unsatisfiable(size)
    return ByteRange(start, min(int(last), size - 1) if last else size - 1, size)


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(f"The requested range starts past the end of the file ({size} bytes).",
                               headers={"content-range": f"bytes */{size}"})
