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
