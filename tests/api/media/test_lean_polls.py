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


def test_a_request_fastapis_telemetry_observes_is_served_by_fastapis_own_handler(
        make_media: Callable[..., Media], monkeypatch: pytest.MonkeyPatch) -> None:
    """With HELYX_OPENTELEMETRY and an SDK configured, FastAPI's handler opens its dependency and
    endpoint spans and logs validation failures: a lean handler would drop them (a review)."""
    import fastapi.routing
    from fastapi.testclient import TestClient

    media = make_media()
    account = media.account("plus")
    job_id = media.client.post(IMAGES, headers={**account.headers, **ASYNC},
                               json={"prompt": "a kite", "size": "256x256"}).json()["id"]
    solved: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    app = media.client.app

    async def observed(scope: Any, receive: Any, send: Any) -> None:  # as FastAPI's telemetry marks a request
        if scope["type"] == "http":
            scope["fastapi.telemetry"] = object()
        await app(scope, receive, send)

    assert media.client.get(f"/api/v1/jobs/{job_id}", headers=account.headers).status_code == 200
    assert solved == []
    watched = TestClient(observed)  # (no lifespan of its own: the app's has run)
    assert watched.get(f"/api/v1/jobs/{job_id}", headers=account.headers).status_code == 200
    chat = watched.post("/api/v1/chat/completions", headers=account.headers,
                        json={"model": "helyx-3.5", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200, chat.text
    assert solved == [f"/api/v1/jobs/{job_id}", "/api/v1/chat/completions"]


def test_a_lean_route_whose_dependencies_are_not_the_ones_its_handler_runs_is_refused() -> None:
    from fastapi import Depends
    from fastapi.routing import APIRouter

    from api.deps import get_caller, require_admin
    from api.lean_route import LeanRoute, served_by

    async def handler(request: Any) -> Any:
        raise AssertionError("never called")

    router = APIRouter(route_class=LeanRoute)

    @served_by(lambda route: handler, runs=(get_caller,))
    async def guarded(job_id: str, caller: Any = Depends(get_caller)) -> None:
        return None

    with pytest.raises(TypeError, match="its lean handler runs"):
        router.add_api_route("/x/{job_id}", guarded, dependencies=[Depends(require_admin)])
    router.add_api_route("/y/{job_id}", guarded)  # exactly the ones it runs: taken

    @served_by(lambda route: handler, runs=(get_caller,))
    async def with_a_query(job_id: str, verbose: bool = False, caller: Any = Depends(get_caller)) -> None:
        return None

    with pytest.raises(TypeError, match="no query, header or cookie parameter"):  # it would never be read
        router.add_api_route("/z/{job_id}", with_a_query)

    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    app = FastAPI()
    app.include_router(router, dependencies=[Depends(require_admin)])  # FastAPI builds the inclusion's routes lazily
    with pytest.raises(TypeError, match="not through include_router"):  # the inclusion's dependencies would not run
        TestClient(app).get("/y/job_1")
