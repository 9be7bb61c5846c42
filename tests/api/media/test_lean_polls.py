"""The two polled routes (GET /jobs/{id}, GET /videos/{id}) are served by plain handlers
(api.lean_route), and documented from their endpoints as before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import pytest

from tests.api.media.conftest import Media
from tests.api.media.helpers import ASYNC, IMAGES


async def _no_solving(*args: Any, **kwargs: Any) -> NoReturn:
    raise AssertionError("FastAPI solved the dependencies of a lean route")


def test_polls_answer_as_before_without_fastapis_dependency_solving(make_media: Callable[..., Media],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    media = make_media()
    plus, other = media.account("plus"), media.account("plus")
    image = media.client.post(IMAGES, headers={**plus.headers, **ASYNC}, json={"prompt": "a kite", "size": "256x256"})
    video = media.client.post("/api/v1/videos", headers=plus.headers, json={"model": "vo3", "prompt": "a boat"})
    assert image.status_code == 202 and video.status_code == 200, (image.text, video.text)
    job_id, video_id = image.json()["id"], video.json()["id"]

    import fastapi.routing
    monkeypatch.setattr(fastapi.routing, "solve_dependencies", _no_solving)
    polled = media.client.get(f"/api/v1/jobs/{job_id}", headers=plus.headers)
    assert polled.status_code == 200 and polled.json()["id"] == job_id, polled.text
    assert "x-request-id" in polled.headers
    retrieved = media.client.get(f"/api/v1/videos/{video_id}", headers=plus.headers)
    assert retrieved.status_code == 200 and retrieved.json()["id"] == video_id, retrieved.text
    # refusals as from any route: no key, another account's job, an unknown id, two keys
    assert media.client.get(f"/api/v1/jobs/{job_id}").json()["error"]["code"] == "missing_api_key"
    assert media.client.get(f"/api/v1/jobs/{job_id}", headers=other.headers).status_code == 404
    assert media.client.get(f"/api/v1/videos/{video_id}", headers=other.headers).status_code == 404
    assert media.client.get("/api/v1/jobs/job_0", headers=plus.headers).json()["error"]["type"] == "not_found_error"
    two = [("Authorization", plus.headers["Authorization"])] * 2
    assert media.client.get(f"/api/v1/videos/{video_id}", headers=two).status_code == 401
    # any other route still goes through FastAPI's solving (here patched to fail: a 500)
    assert media.client.get("/api/v1/jobs", headers=plus.headers).status_code == 500


def test_the_polled_routes_are_documented_from_their_endpoints(make_media: Callable[..., Media]) -> None:
    paths = make_media().client.get("/openapi.json").json()["paths"]
    for path, name in (("/api/v1/jobs/{job_id}", "job_id"), ("/api/v1/videos/{video_id}", "video_id")):
        operation = paths[path]["get"]
        assert [(p["name"], p["in"], p["required"]) for p in operation["parameters"]] == [(name, "path", True)]
        assert operation["security"] == [{"bearer": []}]
        assert {"200", "401", "404"} <= set(operation["responses"])
