"""Downloads answer one byte range (206), as video players and resumed downloads ask, and a copy the
caller already has (If-None-Match) with 304: the video's content route and signed file links alike,
with the whole file for anything else."""

from __future__ import annotations

from tests.api.media.conftest import Media
from tests.api.media.helpers import IMAGES, error_of, poll_video


def test_a_video_is_served_by_byte_ranges_that_join_up_to_the_whole_file(media: Media) -> None:
    account = media.account("plus")
    video = media.client.post("/api/v1/videos", headers=account.headers,
                              json={"model": "vo3", "prompt": "seek me", "seconds": "4", "size": "1280x720"}).json()
    poll_video(media, account, video["id"])
    url = f"/api/v1/videos/{video['id']}/content"
    whole = media.client.get(url, headers=account.headers)
    size = len(whole.content)
    assert whole.status_code == 200 and size > 1000
    assert whole.headers["accept-ranges"] == "bytes" and "content-range" not in whole.headers
    etag = whole.headers["etag"]

    parts = []
    for start in range(0, size, 777):
        end = min(start + 776, size - 1)
        part = media.client.get(url, headers={**account.headers, "Range": f"bytes={start}-{end}"})
        assert part.status_code == 206, part.text
        assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert int(part.headers["content-length"]) == end - start + 1 == len(part.content)
        assert (part.headers["content-type"], part.headers["etag"]) == ("video/mp4", etag)
        parts.append(part.content)
    assert b"".join(parts) == whole.content

    tail = media.client.get(url, headers={**account.headers, "Range": "bytes=-100"})
    assert (tail.status_code, tail.content) == (206, whole.content[-100:])
    stale = media.client.get(url, headers={**account.headers, "Range": "bytes=0-9", "If-Range": '"other"'})
    assert (stale.status_code, stale.content) == (200, whole.content)  # If-Range names another file: all of it
    fresh = media.client.get(url, headers={**account.headers, "Range": "bytes=0-9", "If-Range": etag})
    assert (fresh.status_code, fresh.content) == (206, whole.content[:10])
    several = media.client.get(url, headers={**account.headers, "Range": "bytes=0-9,20-29"})
    assert (several.status_code, several.content) == (200, whole.content)
    head = media.client.head(url, headers={**account.headers, "Range": "bytes=0-9"})  # Range is for GET only
    assert (head.status_code, head.headers["content-length"]) == (200, str(size))
    assert head.headers["accept-ranges"] == "bytes"


def test_a_range_past_the_end_is_416_in_the_error_shape_and_a_signed_link_takes_ranges(media: Media) -> None:
    account = media.account()
    image = media.client.post(IMAGES, headers=account.headers, json={"prompt": "ranged", "size": "256x256"}).json()
    url = image["data"][0]["url"]  # signed: no key needed
    whole = media.client.get(url)
    size = len(whole.content)
    first = media.client.get(url, headers={"Range": "bytes=0-7"})
    assert (first.status_code, first.content) == (206, whole.content[:8]) and first.content.startswith(b"\x89PNG")

    refused = media.client.get(url, headers={"Range": f"bytes={size}-"})
    error = error_of(refused, 416)
    assert error["code"] == "range_not_satisfiable" and error["type"] == "invalid_request_error"
    assert refused.headers["content-range"] == f"bytes */{size}"
    assert refused.headers["x-should-retry"] == "false"
    unsigned = media.client.get(url.split("?", 1)[0], headers={"Range": "bytes=0-7"})
    assert unsigned.status_code == 401  # a range never skips the check of the caller


def test_a_copy_the_caller_already_has_is_a_304_without_a_body(media: Media) -> None:
    account = media.account()
    image = media.client.post(IMAGES, headers=account.headers, json={"prompt": "cached", "size": "256x256"}).json()
    url = image["data"][0]["url"]
    whole = media.client.get(url)
    etag = whole.headers["etag"]
    for seen in (etag, f"W/{etag}", f'"file_other", {etag}', "*"):
        again = media.client.get(url, headers={"If-None-Match": seen})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag), seen
        assert "content-length" not in again.headers or again.headers["content-length"] == "0"
    other = media.client.get(url, headers={"If-None-Match": '"file_other"'})
    assert (other.status_code, other.content) == (200, whole.content)
    unsigned = media.client.get(url.split("?", 1)[0], headers={"If-None-Match": etag})
    assert unsigned.status_code == 401  # a validator never skips the check of the caller

