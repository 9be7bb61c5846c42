from __future__ import annotations

import io
import math
import time
from typing import Any

import av
import httpx
import pytest

from common.errors import UpstreamError, UpstreamTimeout
from common.providers.base import VideoProvider, VideoRequest
from common.providers.veo import VeoVideoProvider
from tests.common.media.conftest import API_KEY, Served
from tests.fakes.veo_upstream import FakeVeoUpstream

pytestmark = pytest.mark.anyio
MODEL = "veo-3.0-generate-001"


def _request(seconds: int = 8, width: int = 1280, height: int = 720) -> VideoRequest:
    return VideoRequest(model=MODEL, prompt="a drone over a lake", seconds=seconds, width=width, height=height)


def _provider(client: httpx.AsyncClient, served: Served, **kwargs: Any) -> VeoVideoProvider:
    kwargs.setdefault("poll_interval", 0.01)
    kwargs.setdefault("max_wait", 10.0)
    return VeoVideoProvider(client, served.base_url, API_KEY, **kwargs)


def _is_playable_mp4(data: bytes) -> bool:
    with av.open(io.BytesIO(data)) as container:
        return bool(container.streams.video) and next(container.decode(video=0), None) is not None


async def test_the_gemini_api_form_is_submitted_polled_and_downloaded(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.polls_before_done = 3
    provider = _provider(http_client, veo_served)
    assert isinstance(provider, VideoProvider)
    seen: list[int] = []
    video = await provider.generate_video(_request(), on_progress=seen.append)

    assert video.content_type == "video/mp4"
    assert video.data == veo_fake.video
    assert _is_playable_mp4(video.data)
    submit, *polls, download = veo_fake.requests
    assert (submit.method, submit.path) == ("POST", f"/v1beta/models/{MODEL}:predictLongRunning")
    assert submit.body == {
        "instances": [{"prompt": "a drone over a lake"}],
        "parameters": {"aspectRatio": "16:9", "durationSeconds": 8, "resolution": "720p"},
    }
    assert len(polls) == 4  # three unfinished answers, then done
    assert {(p.method, p.path) for p in polls} == {("GET", polls[0].path)}  # the one operation, by name
    assert polls[0].path.startswith(f"/v1beta/models/{MODEL}/operations/")
    assert download.path.endswith(":download") and download.query == "alt=media"
    assert all(r.headers.get("x-goog-api-key") == API_KEY for r in veo_fake.requests)
    assert seen[0] == 0 and seen[-1] == 100
    assert seen == sorted(seen)
    assert all(p <= 95 for p in seen[:-1])


@pytest.mark.parametrize(("seconds", "width", "height", "parameters"), [
    (4, 1280, 720, {"aspectRatio": "16:9", "durationSeconds": 4, "resolution": "720p"}),
    (5, 720, 1280, {"aspectRatio": "9:16", "durationSeconds": 6, "resolution": "720p"}),
    (12, 1920, 1080, {"aspectRatio": "16:9", "durationSeconds": 8, "resolution": "1080p"}),
    (8, 1024, 1792, {"aspectRatio": "9:16", "durationSeconds": 8, "resolution": "720p"}),
])
async def test_size_and_seconds_are_translated(
    seconds: int, width: int, height: int, parameters: dict[str, Any],
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served,
) -> None:
    await _provider(http_client, veo_served).generate_video(_request(seconds, width, height))
    assert veo_fake.requests[0].body["parameters"] == parameters


async def test_metadata_progress_is_reported_when_the_upstream_sends_it(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.polls_before_done, veo_fake.progress = 3, [10, 40, 99]
    seen: list[int] = []
    await _provider(http_client, veo_served, expected_seconds=1e6).generate_video(_request(), seen.append)
    assert seen == [0, 10, 40, 95, 100]  # capped at 95 until the video is in hand


async def test_progress_that_is_not_a_finite_number_is_ignored(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    """Python's JSON parser accepts NaN and Infinity; int() of either raised and failed the job."""
    veo_fake.polls_before_done, veo_fake.progress = 3, [math.nan, math.inf, 40]
    seen: list[int] = []
    await _provider(http_client, veo_served, expected_seconds=1e6).generate_video(_request(), seen.append)
    assert seen == [0, 40, 100]


async def test_the_time_estimate_rises_without_metadata(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.polls_before_done = 30
    seen: list[int] = []
    await _provider(http_client, veo_served, expected_seconds=0.2).generate_video(_request(), seen.append)
    assert seen[-1] == 100
    assert 95 in seen  # the estimate ran out and stayed at its cap
    assert len(seen) > 3 and seen == sorted(seen)


async def test_the_vertex_form_with_inline_bytes(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.form = "vertex_bytes"
    veo_fake.polls_before_done = 2
    video = await _provider(http_client, veo_served).generate_video(_request())
    assert (video.data, video.content_type) == (veo_fake.video, "video/mp4")
    assert not veo_fake.requests_to(":download")
    # Vertex AI reads its operations ("projects/...") by a POST to fetchPredictOperation, not a GET
    polls = veo_fake.requests_to(":fetchPredictOperation")
    assert len(polls) == 3 and all(p.body["operationName"].startswith("projects/") for p in polls)
    assert not veo_fake.requests_to("/operations/")


@pytest.mark.parametrize("claimed", ["text/html", "image/svg+xml", "application/octet-stream"])
async def test_inline_bytes_are_a_video_whatever_type_the_upstream_claims(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served, claimed: str
) -> None:
    """The file is served from the gateway's own origin: a type the upstream names is never taken
    as HTML or SVG (a downloaded video was already forced to video/*, inline bytes were not)."""
    veo_fake.form, veo_fake.mime_type = "vertex_bytes", claimed
    video = await _provider(http_client, veo_served).generate_video(_request())
    assert video.content_type == "video/mp4"


async def test_the_vertex_form_with_a_gcs_uri_is_a_clear_final_error(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.form = "vertex_gcs"
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, veo_served).generate_video(_request())
    assert caught.value.retryable is False
    assert "gs://fake-bucket/veo/sample_0.mp4" in caught.value.message


@pytest.mark.parametrize(("code", "retryable"), [(14, True), (8, True), (13, True), (3, False), (9, False)])
async def test_an_operation_error_is_retryable_only_when_transient(
    code: int, retryable: bool, http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served,
    caplog: pytest.LogCaptureFixture,
) -> None:
    veo_fake.polls_before_done, veo_fake.op_error = 1, {"code": code, "message": "the fake operation failed"}
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, veo_served).generate_video(_request())
    assert caught.value.retryable is retryable and f"code {code}" in caught.value.message
    # a transient failure's text (quota, an internal error) is the operator's to read, in the log
    assert ("the fake operation failed" in caught.value.message) is not retryable
    logged = [r.getMessage() for r in caplog.records if r.name == "helyx.upstream"]
    assert any("the fake operation failed" in line for line in logged) is retryable


async def test_an_operation_error_about_the_operators_account_is_not_told_to_the_client(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served, caplog: pytest.LogCaptureFixture,
) -> None:
    """A job's error message reaches its client: one naming the operator's project or billing
    account is the operator's to read, in the log (found by a review: 06bc202 missed this path)."""
    veo_fake.polls_before_done, veo_fake.op_error = 1, {
        "code": 9, "message": "Billing is disabled for project acme-prod-4711 (billing account 01AB-CDEF)"}
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, veo_served).generate_video(_request())
    assert caught.value.retryable is False and "acme-prod" not in caught.value.message
    assert "the reason is in the gateway operator's log" in caught.value.message
    assert any("acme-prod-4711" in r.getMessage() for r in caplog.records if r.name == "helyx.upstream")


async def test_an_operation_auth_error_is_an_auth_error(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.op_error = {"code": 7, "message": "permission denied"}
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, veo_served).generate_video(_request())
    assert (caught.value.code, caught.value.retryable) == ("upstream_auth", False)


@pytest.mark.parametrize("form", ["gemini", "vertex_bytes"])
async def test_an_rai_filtered_video_is_a_final_content_filter_error(
    form: str, http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.form, veo_fake.rai_reasons = form, ["The prompt could not be submitted (celebrity likeness)."]
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, veo_served).generate_video(_request())
    assert (caught.value.code, caught.value.retryable) == ("content_filtered", False)
    assert "celebrity likeness" in caught.value.message


async def test_a_finished_operation_without_a_video_is_a_bad_answer(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.form = "empty"
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, veo_served).generate_video(_request())
    assert caught.value.code == "upstream_bad_response"


@pytest.mark.parametrize(("status", "retryable", "code"), [
    (429, True, "upstream_rate_limited"), (500, True, "upstream_error"), (401, False, "upstream_auth"),
    (403, False, "upstream_auth"), (400, False, "upstream_bad_request"),
])
async def test_submit_http_errors_are_mapped(
    status: int, retryable: bool, code: str, http_client: httpx.AsyncClient,
    veo_fake: FakeVeoUpstream, veo_served: Served,
) -> None:
    veo_fake.fail_status, veo_fake.fail_times = status, -1
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, veo_served).generate_video(_request())
    assert (caught.value.retryable, caught.value.code, caught.value.upstream_status) == (retryable, code, status)
    assert len(veo_fake.requests) == 1  # the adapter itself never retries a submit


async def test_failing_first_submits_then_succeeding(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.fail_status, veo_fake.fail_times = 503, 1
    provider = _provider(http_client, veo_served)
    with pytest.raises(UpstreamError) as caught:
        await provider.generate_video(_request())
    assert caught.value.retryable
    assert (await provider.generate_video(_request())).data == veo_fake.video


async def test_a_few_transient_poll_failures_are_ridden_out(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.polls_before_done, veo_fake.poll_fail_status, veo_fake.poll_fail_times = 1, 503, 3
    video = await _provider(http_client, veo_served, poll_retries=3).generate_video(_request())
    assert video.data == veo_fake.video
    assert veo_fake.submits == 1  # no second (paid) submit


async def test_persistent_poll_failures_fail_the_job(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.poll_fail_status, veo_fake.poll_fail_times = 503, -1
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, veo_served, poll_retries=2).generate_video(_request())
    assert caught.value.retryable
    assert len(veo_fake.requests_to("/operations/")) == 3


async def test_a_final_poll_failure_is_not_retried(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.poll_fail_status, veo_fake.poll_fail_times = 403, -1
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, veo_served).generate_video(_request())
    assert caught.value.code == "upstream_auth"
    assert len(veo_fake.requests_to("/operations/")) == 1


async def test_a_failed_download_of_a_made_video_is_tried_again_without_a_second_submit(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.download_fail_status, veo_fake.download_fail_times = 503, 2
    video = await _provider(http_client, veo_served, poll_retries=3).generate_video(_request())
    assert video.data == veo_fake.video
    assert veo_fake.submits == 1  # Google bills each made video: never a second submit
    assert len(veo_fake.requests_to(":download")) == 3


async def test_a_download_that_keeps_failing_fails_the_job_for_good(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.download_fail_status, veo_fake.download_fail_times = 503, -1
    with pytest.raises(UpstreamError) as caught:
        await _provider(http_client, veo_served, poll_retries=2).generate_video(_request())
    assert not caught.value.retryable  # a job retry would submit (and pay for) another video
    assert "not requested again" in caught.value.message
    assert len(veo_fake.requests_to(":download")) == 3
    assert veo_fake.submits == 1


async def test_an_operation_that_never_finishes_times_out_at_max_wait(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.polls_before_done = 10**9
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as caught:
        await _provider(http_client, veo_served, poll_interval=0.05, max_wait=0.5).generate_video(_request())
    assert 0.4 < time.monotonic() - started < 3
    assert caught.value.status == 504


async def test_a_hanging_submit_times_out(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.hang = 3.0
    async with httpx.AsyncClient(timeout=0.3) as impatient:
        with pytest.raises(UpstreamTimeout):
            await _provider(impatient, veo_served).generate_video(_request())


async def test_an_unreachable_upstream_is_retryable_and_named_so(http_client: httpx.AsyncClient) -> None:
    """A refused connection is not a timeout (through aiohttp it arrives as one: ConnectTimeout)."""
    provider = VeoVideoProvider(http_client, "http://127.0.0.1:9/v1beta", API_KEY, poll_interval=0.01)
    with pytest.raises(UpstreamError) as caught:
        await provider.generate_video(_request())
    assert not isinstance(caught.value, UpstreamTimeout)
    assert (caught.value.code, caught.value.retryable, caught.value.status) == ("upstream_unreachable", True, 502)


async def test_the_download_follows_a_redirect_on_the_same_origin_with_the_key(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served
) -> None:
    veo_fake.download_redirect = True
    video = await _provider(http_client, veo_served).generate_video(_request())
    assert video.data == veo_fake.video
    [blob] = veo_fake.requests_to("/blobs/")
    assert blob.headers.get("x-goog-api-key") == API_KEY


async def test_the_key_is_not_sent_to_another_origin(
    http_client: httpx.AsyncClient, veo_fake: FakeVeoUpstream, veo_served: Served,
    other_veo_fake: FakeVeoUpstream, other_veo_served: Served,
) -> None:
    veo_fake.download_redirect, veo_fake.redirect_origin = True, other_veo_served.url
    video = await _provider(http_client, veo_served).generate_video(_request())
    assert video.data == veo_fake.video
    [download] = veo_fake.requests_to(":download")
    assert download.headers.get("x-goog-api-key") == API_KEY
    [blob] = other_veo_fake.requests
    assert blob.path.startswith("/blobs/")
    assert "x-goog-api-key" not in blob.headers
