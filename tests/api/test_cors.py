"""With HELYX_CORS_ORIGINS set, a browser script on an allowed origin can read the headers the
OpenAI JS SDK acts on: without them it retried 409s, ignored Retry-After and polled at its own pace."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from common.db import make_engine
from common.migrate import upgrade
from tests.conftest import create_test_account, make_settings

ORIGIN = "https://app.example.com"
READ_BY_THE_SDK = {"x-request-id", "x-should-retry", "retry-after", "x-ratelimit-limit-requests",
                   "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "openai-poll-after-ms"}


def test_an_allowed_origin_can_read_the_headers_the_sdk_acts_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cors_origins=[ORIGIN])
    engine = make_engine(settings.database_url)
    upgrade(engine)
    account = create_test_account(engine)
    with TestClient(create_app(settings)) as client:
        response = client.get("/api/v1/credits", headers={**account.headers, "Origin": ORIGIN})
        refused = client.get("/api/v1/credits", headers={"Origin": ORIGIN})
        stranger = client.get("/api/v1/credits", headers={**account.headers, "Origin": "https://evil.example"})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert exposed >= READ_BY_THE_SDK, exposed
    assert exposed >= {"content-range", "accept-ranges", "etag"}, exposed  # a script resuming a download reads them
    assert refused.status_code == 401 and refused.headers["x-should-retry"] == "false"
    assert "x-should-retry" in refused.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in stranger.headers


def test_an_unexpected_error_reaches_an_allowed_origin_with_its_cors_headers(tmp_path: Path) -> None:
    """A 500 answered outside the CORS middleware had no access-control-allow-origin: the browser
    hid it from the script (a network error), so the JS SDK could neither read nor retry it."""
    app = create_app(make_settings(tmp_path, cors_origins=[ORIGIN]))

    @app.get("/api/v1/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/api/v1/boom", headers={"Origin": ORIGIN, "x-request-id": "req-cors-500"})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error", response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["x-request-id"] == "req-cors-500"
    assert "x-request-id" in response.headers["access-control-expose-headers"]
