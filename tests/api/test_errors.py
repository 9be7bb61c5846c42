"""Every error is the OpenAI envelope {"error": {message, type, code, param}} (SPEC §2): validation
(400, never FastAPI's 422), routing (404, 405), authentication (401); errors a retry cannot mend
say `x-should-retry: false`; every response carries `x-request-id`. Body size (413):
test_errors_body_size.py."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from common import accounts, billing, clock, keys
from common.errors import PermissionDenied, RateLimited, ServiceUnavailable
from common.settings import Settings
from tests.conftest import ADMIN_TOKEN, TEST_TZ, TestAccount, make_settings

LIMIT = 4096
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NO_RETRY_STATUSES = {400, 401, 402, 403, 404, 409}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, max_body_bytes=LIMIT)


def assert_envelope(response: httpx.Response, status: int, type_: str, *, param: Any = ..., code: str | None = None
                    ) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "code", "param"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["code"], str) and error["code"]
    assert error["type"] == type_
    if param is not ...:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert "detail" not in response.text
    if status in NO_RETRY_STATUSES:
        assert response.headers.get("x-should-retry") == "false"
    assert response.headers.get("x-request-id")
    return error


def key_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM api_keys")).scalar_one())


# ---------------------------------------------------------------- 400


def test_malformed_json_is_400_not_422(app_client: TestClient, account: TestAccount) -> None:
    response = app_client.post("/api/v1/keys", content=b'{"name": "x",', headers={
        **account.headers, "content-type": "application/json"})
    assert_envelope(response, 400, "invalid_request_error")


def test_a_body_that_is_not_an_object_is_400(app_client: TestClient) -> None:
    response = app_client.post("/admin/accounts", json=["a@b.c"], headers=ADMIN)
    assert_envelope(response, 400, "invalid_request_error")


def test_missing_field_is_400_and_names_it(app_client: TestClient) -> None:
    response = app_client.post("/admin/accounts", json={"plan": "free"}, headers=ADMIN)
    error = assert_envelope(response, 400, "invalid_request_error", param="email")
    assert "email" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": 5}, "name"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"daily_credit_cap": "lots"}, "daily_credit_cap"),
        ({"daily_credit_cap": -1}, "daily_credit_cap"),
        ({"name": "n" * 101}, "name"),
    ],
)
def test_wrong_type_or_out_of_range_is_400_with_param(
    app_client: TestClient, account: TestAccount, engine: Engine, body: dict[str, Any], param: str
) -> None:
    before = key_count(engine)
    response = app_client.post("/api/v1/keys", json=body, headers=account.headers)
    assert_envelope(response, 400, "invalid_request_error", param=param)
    assert key_count(engine) == before


def test_bad_query_parameter_is_400_with_param(app_client: TestClient, account: TestAccount) -> None:
    response = app_client.get("/api/v1/usage?limit=abc", headers=account.headers)
    assert_envelope(response, 400, "invalid_request_error", param="limit")
    response = app_client.get("/api/v1/usage?limit=0", headers=account.headers)
    assert_envelope(response, 400, "invalid_request_error", param="limit")


# ---------------------------------------------------------------- 404, 405


def test_unknown_route_is_404_in_the_envelope(app_client: TestClient) -> None:
    assert_envelope(app_client.get("/api/v1/no-such-thing"), 404, "not_found_error")
    assert_envelope(app_client.post("/nowhere", json={}), 404, "not_found_error")


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/v1/embeddings"), ("POST", "/api/v1/responses"), ("GET", "/api/v1/files"),
    ("POST", "/api/v1/audio/speech"), ("POST", "/api/v1/images/edits"),
])
def test_an_openai_resource_this_gateway_lacks_is_named_in_its_404(app_client: TestClient, account: TestAccount,
                                                                   method: str, path: str) -> None:
    """The SDK raised NotFoundError("Unknown route."), easily read as an unknown model (found by
    an SDK-breadth review): the 404 names what was asked for and what is served."""
    error = assert_envelope(app_client.request(method, path, headers=account.headers), 404, "not_found_error")
    assert error["code"] == "unknown_route"
    assert f"{method} {path}" in error["message"] and "/api/v1/chat/completions" in error["message"], error


def test_a_404_names_at_most_a_bounded_path(app_client: TestClient) -> None:
    error = assert_envelope(app_client.get("/x" * 2000), 404, "not_found_error")
    assert len(error["message"]) < 600, len(error["message"])


def test_a_trailing_slash_is_a_404_in_the_envelope_not_a_bare_redirect(app_client: TestClient,
                                                                       account: TestAccount) -> None:
    """Starlette answered a bare 307 to the path without it: `/jobs/%2F` led to the job list."""
    for method, path in (("GET", "/api/v1/jobs/%2F"), ("GET", "/api/v1/credits/"), ("POST", "/api/v1/videos/"),
                         ("DELETE", "/api/v1/videos/job_1/"), ("GET", "/api/v1/models/")):
        response = app_client.request(method, path, headers=account.headers, follow_redirects=False)
        assert assert_envelope(response, 404, "not_found_error")["code"] == "unknown_route", path


def test_wrong_method_is_405_in_the_envelope(app_client: TestClient, account: TestAccount) -> None:
    response = app_client.put("/api/v1/credits", headers=account.headers)
    assert_envelope(response, 405, "invalid_request_error")
    assert response.headers.get("x-should-retry") == "false"
    assert response.headers["allow"] == "GET"


def test_a_405_to_head_names_the_methods_there_are(app_client: TestClient, account: TestAccount) -> None:
    """Its body is dropped, as HEAD's is, but the Allow header was empty."""
    response = app_client.head("/api/v1/credits", headers=account.headers)
    assert response.status_code == 405 and response.headers["allow"] == "GET"


# ---------------------------------------------------------------- 401


def test_missing_key_is_401(app_client: TestClient) -> None:
    assert_envelope(app_client.get("/api/v1/credits"), 401, "authentication_error", code="missing_api_key")
    assert_envelope(app_client.get("/api/v1/credits", headers={"Authorization": "Basic abc"}), 401,
                    "authentication_error")
    assert_envelope(app_client.get("/api/v1/credits", headers={"Authorization": "Bearer "}), 401,
                    "authentication_error")


def test_invalid_key_is_401(app_client: TestClient, account: TestAccount) -> None:
    typo = account.api_key[:-1] + ("A" if account.api_key[-1] != "A" else "B")
    for presented in ("hx-nope", typo, "sk-" + account.api_key[3:]):
        response = app_client.get("/api/v1/credits", headers={"Authorization": f"Bearer {presented}"})
        assert_envelope(response, 401, "authentication_error", code="invalid_api_key")


def test_two_authorization_headers_are_a_401_whichever_comes_first(app_client: TestClient,
                                                                   account: TestAccount) -> None:
    """The first one was read (a fuzz review): a proxy in front that reads the last one would
    vouch for another caller than the one served."""
    good, other = f"Bearer {account.api_key}", "Bearer hx-other"
    chat = {"model": "helyx-3.5", "messages": [{"role": "user", "content": "hi"}]}
    for pair in ([good, other], [other, good], [good, good]):
        headers = [("Authorization", value) for value in pair]
        assert_envelope(app_client.get("/api/v1/credits", headers=headers), 401, "authentication_error")
        assert_envelope(app_client.post("/api/v1/chat/completions", headers=headers, json=chat), 401,
                        "authentication_error")
        assert_envelope(app_client.get("/api/v1/jobs/job_0", headers=headers), 401, "authentication_error")
    assert app_client.get("/api/v1/credits", headers=[("Authorization", good)]).status_code == 200


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip", "x-unknown"])
def test_a_compressed_body_is_refused_saying_so(app_client: TestClient, account: TestAccount, engine: Engine,
                                                encoding: str) -> None:
    """A gzip body was a 400 about invalid JSON, and a plain body labelled `br` was served as if the
    header were not there (a fuzz review). Nothing is read, held or charged."""
    before = key_count(engine)
    response = app_client.post("/api/v1/keys", json={"name": "k"},
                               headers={**account.headers, "Content-Encoding": encoding})
    error = assert_envelope(response, 400, "invalid_request_error", code="unsupported_content_encoding")
    assert error["param"] == "Content-Encoding" and "uncompressed" in error["message"], error
    assert key_count(engine) == before
    two = app_client.post("/api/v1/keys", json={"name": "k"},  # any of the headers counts, not the first
                          headers=[*account.headers.items(), ("Content-Encoding", "identity"),
                                   ("Content-Encoding", encoding)])
    assert_envelope(two, 400, "invalid_request_error", code="unsupported_content_encoding")
    identity = app_client.post("/api/v1/keys", json={"name": "k"},
                               headers={**account.headers, "Content-Encoding": "identity"})
    assert identity.status_code == 201 and key_count(engine) == before + 1


def test_revoked_key_is_401(app_client: TestClient, account: TestAccount, engine: Engine) -> None:
    with engine.begin() as conn:
        accounts.revoke_key(conn, account.key_id, now=clock.now().timestamp())
    response = app_client.get("/api/v1/credits", headers=account.headers)
    assert_envelope(response, 401, "authentication_error", code="revoked_api_key")


def test_expired_key_is_401(app_client: TestClient, account: TestAccount, engine: Engine) -> None:
    start = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    with engine.begin() as conn:
        key = accounts.create_key(conn, account.account_id, now=start.timestamp(),
                                  expires_at=start.timestamp() + 60)
    headers = {"Authorization": f"Bearer {key.secret}"}
    with clock.frozen(start) as advance:
        advance(timedelta(seconds=59))
        assert app_client.get("/api/v1/credits", headers=headers).status_code == 200
        advance(timedelta(seconds=1))
        assert_envelope(app_client.get("/api/v1/credits", headers=headers), 401, "authentication_error",
                        code="expired_api_key")


# ---------------------------------------------------------------- 402, 403, 409 and the retryable ones


@pytest.fixture
def probe_routes(app_client: TestClient, account: TestAccount, engine: Engine) -> TestClient:
    """Routes that end in the errors the account routes never raise, the way real routes do."""
    app = app_client.app

    def quota() -> None:
        billing.reserve(engine, account_id=account.account_id, key_id=None, amount=10**15, purpose="probe",
                        ttl=60, tz=TEST_TZ)

    def forbidden() -> None:
        raise PermissionDenied("This model needs the Plus plan or higher.")

    def limited() -> None:
        raise RateLimited("Too many requests.", headers={"Retry-After": "7"})

    def unavailable() -> None:
        raise ServiceUnavailable("Try again.")

    def boom() -> None:
        raise RuntimeError("a bug")

    for path, endpoint in (("quota", quota), ("forbidden", forbidden), ("limited", limited),
                           ("unavailable", unavailable), ("boom", boom)):
        app.add_api_route(f"/probe/{path}", endpoint, methods=["GET"])  # type: ignore[attr-defined]
    return app_client


def test_402_says_what_is_left_and_when_it_resets(probe_routes: TestClient) -> None:
    error = assert_envelope(probe_routes.get("/probe/quota"), 402, "insufficient_quota")
    assert "1000" in error["message"] and "resets at" in error["message"]


def test_403_is_a_permission_error(probe_routes: TestClient) -> None:
    assert_envelope(probe_routes.get("/probe/forbidden"), 403, "permission_error")


def test_409_on_a_duplicate_account(app_client: TestClient) -> None:
    assert app_client.post("/admin/accounts", json={"email": "dup@example.com"}, headers=ADMIN).status_code == 201
    response = app_client.post("/admin/accounts", json={"email": "dup@example.com"}, headers=ADMIN)
    assert_envelope(response, 409, "conflict_error")


def test_retryable_errors_do_not_say_should_retry_false(probe_routes: TestClient) -> None:
    limited = probe_routes.get("/probe/limited")
    assert_envelope(limited, 429, "rate_limit_error")
    assert limited.headers["retry-after"] == "7"
    unavailable = probe_routes.get("/probe/unavailable")
    assert_envelope(unavailable, 503, "server_error")
    for response in (limited, unavailable):
        assert response.headers.get("x-should-retry") != "false"


def test_an_unexpected_error_is_a_500_envelope_with_a_request_id(probe_routes: TestClient) -> None:
    response = probe_routes.get("/probe/boom", headers={"x-request-id": "trace-500"})
    error = assert_envelope(response, 500, "server_error")
    assert "a bug" not in error["message"]  # no internals leak
    assert response.headers["x-request-id"] == "trace-500"


# ---------------------------------------------------------------- x-request-id


def test_every_response_has_a_request_id(app_client: TestClient, account: TestAccount) -> None:
    responses = [
        app_client.get("/healthz"),
        app_client.get("/api/v1/credits", headers=account.headers),
        app_client.get("/api/v1/credits"),
        app_client.get("/missing"),
        app_client.post("/api/v1/keys", content=b"{", headers={**account.headers, "content-type": "application/json"}),
        app_client.post("/api/v1/keys", content=b"x" * (LIMIT + 1), headers=account.headers),
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids), ids
    assert len(set(ids)) == len(ids)  # a fresh one for each request


def test_a_sane_incoming_request_id_is_echoed(app_client: TestClient, account: TestAccount) -> None:
    for path, headers in (("/api/v1/credits", account.headers), ("/api/v1/credits", {}), ("/nope", {})):
        response = app_client.get(path, headers={**headers, "x-request-id": "client-abc_123.4:5"})
        assert response.headers["x-request-id"] == "client-abc_123.4:5"


@pytest.mark.parametrize("incoming", ["has space", "x" * 200, "semi;colon", "quote\"d"])
def test_an_insane_incoming_request_id_is_replaced(app_client: TestClient, incoming: str) -> None:
    response = app_client.get("/healthz", headers={"x-request-id": incoming})
    assert response.headers["x-request-id"] != incoming
    assert response.headers["x-request-id"].startswith("req_")


def test_a_database_outage_is_a_503_counted_and_logged_as_one(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                               ) -> None:
    """Every request of an outage: 503 in the envelope with its request id, counted as a 503 in the
    metrics and logged as one warning line, not raised on as a 500 with a traceback (a client that
    raises server exceptions, as uvicorn does, sees nothing escape the app)."""
    from api.app import create_app

    down = make_settings(tmp_path, database_url="postgresql://postgres@127.0.0.1:9/helyx")  # nothing listens
    key = {"Authorization": "Bearer " + keys.generate_key()}
    with TestClient(create_app(down), raise_server_exceptions=True) as client:
        for path in ("/api/v1/credits", "/api/v1/jobs/job_0123456789abcdef"):
            response = client.get(path, headers=key)
            assert_envelope(response, 503, "server_error")
            assert response.headers["x-request-id"]
        metrics = client.get("/metrics").text
    assert 'helyx_http_requests_total{method="GET",route="/api/v1/credits",status="503"} 1.0' in metrics
    assert 'route="/api/v1/credits",status="500"' not in metrics  # (the registry is the process's)
    assert 'route="/api/v1/jobs/{job_id}",status="500"' not in metrics
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
