"""Which byte range a download's Range header selects (api.byte_ranges), at the edges RFC 9110 names."""

from __future__ import annotations

import pytest

from api.byte_ranges import ByteRange, requested_range
from common.errors import RangeNotSatisfiable

ETAG = '"file_1"'


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-0", (0, 0)),
    ("bytes=0-99", (0, 99)),
    ("bytes=10-", (10, 99)),
    ("bytes=90-500", (90, 99)),  # an end past the file is clamped to its last byte
    ("bytes=-10", (90, 99)),
    ("bytes=-1000", (0, 99)),  # a suffix longer than the file is the whole file
    ("Bytes= 5-6 ", (5, 6)),  # the unit is case-insensitive; whitespace around the set is allowed
])
def test_one_range_is_selected_and_clamped_to_the_file(header: str, expected: tuple[int, int]) -> None:
    part = requested_range(header, None, ETAG, 100)
    assert part == ByteRange(*expected, 100)
    assert part.length == expected[1] - expected[0] + 1
    assert part.content_range == f"bytes {expected[0]}-{expected[1]}/100"


@pytest.mark.parametrize("header", [
    "bytes=0-1,5-6",  # several ranges: the whole file, as a server may answer
    "items=0-1", "bytes=", "bytes=a-b", "bytes=5-1", "bytes=1-2-3", "bytes=--1", "bytes=٣-٤",
    "bytes=" + "9" * 65 + "-",  # numbers longer than any header would need are not parsed
])
def test_anything_but_one_valid_byte_range_means_the_whole_file(header: str) -> None:
    assert requested_range(header, None, ETAG, 100) is None


def test_positions_far_past_any_file_are_still_read() -> None:
    assert requested_range("bytes=5-" + "9" * 30, None, ETAG, 100) == ByteRange(5, 99, 100)
    with pytest.raises(RangeNotSatisfiable):
        requested_range("bytes=" + "9" * 30 + "-", None, ETAG, 100)


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=5000-5001", "bytes=-0"])
def test_a_range_past_the_end_is_416_naming_the_size(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as refused:
        requested_range(header, None, ETAG, 100)
    assert refused.value.status == 416 and refused.value.code == "range_not_satisfiable"
    assert refused.value.headers == {"content-range": "bytes */100"}


def test_if_range_must_name_this_files_etag_or_the_whole_file_is_sent() -> None:
    assert requested_range("bytes=0-9", ETAG, ETAG, 100) == ByteRange(0, 9, 100)
    assert requested_range("bytes=0-9", '"file_2"', ETAG, 100) is None
    assert requested_range("bytes=0-9", "Wed, 21 Oct 2015 07:28:00 GMT", ETAG, 100) is None
    assert requested_range("bytes=500-", '"file_2"', ETAG, 100) is None  # not 416: the range is ignored


def test_no_header_or_an_empty_file_means_the_whole_file() -> None:
    assert requested_range(None, None, ETAG, 100) is None
    assert requested_range("bytes=0-0", None, ETAG, 0) is None
