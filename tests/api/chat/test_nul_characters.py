"""A NUL character (U+0000) in a path, a query or a stored field is the caller's bad input: a 404
or a 400 naming the parameter, never a 500 (PostgreSQL cannot keep one in text), and nothing
changes. Checked on both databases; then the last line behind those checks: the database's own
refusal of such text, on real PostgreSQL, answered as a 400."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api import errors
from common.pg_async import AsyncStatements
from tests.api.chat.helpers import Gateway, GatewayFactory
from tests.api.test_errors import assert_envelope
from tests.conftest import make_settings


@pytest.fixture
def gw(make_gateway: GatewayFactory, database: dict[str, str]) -> Gateway:
    return make_gateway(**database)


def _counts(engine: Engine, account_id: str) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(int(conn.execute(text(f"SELECT COUNT(*) FROM {table} WHERE account_id = :a"),
                                      {"a": account_id}).scalar_one())
                     for table in ("api_keys", "jobs", "holds", "ledger_entries", "generations"))


@pytest.mark.parametrize("path", ["/generations/%00", "/jobs/%00", "/videos/%00", "/videos/%00/content",
                                  "/files/%00/content", "/jobs/job_%00/cancel"])
def test_a_nul_in_an_id_is_a_404(gw: Gateway, path: str) -> None:
    account = gw.account("plus")
    method = "POST" if path.endswith("/cancel") else "GET"
    response = httpx.request(method, gw.api + path, headers=account.headers, timeout=10)
    assert_envelope(response, 404, "not_found_error", code="not_found")
    assert response.headers["x-should-retry"] == "false" and response.headers["x-request-id"]


def test_a_nul_in_a_key_id_to_revoke_is_a_404_and_revokes_nothing(gw: Gateway) -> None:
    account = gw.account()
    before = _counts(gw.engine, account.account_id)
    assert_envelope(httpx.delete(gw.api + "/keys/%00", headers=account.headers), 404, "not_found_error")
    assert httpx.get(gw.api + "/credits", headers=account.headers).status_code == 200  # the key still works
    assert _counts(gw.engine, account.account_id) == before


@pytest.mark.parametrize(("query", "param"), [("key_id=%00", "key_id"), ("after=abc%00", "after"),
                                              ("limit=5&since=1%00", "since")])
def test_a_nul_in_a_query_value_is_a_400_naming_it(gw: Gateway, query: str, param: str) -> None:
    account = gw.account()
    assert_envelope(httpx.get(f"{gw.api}/usage?{query}", headers=account.headers), 400, "invalid_request_error",
                    param=param)


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/keys", {"name": "a\u0000b"}, "name"),
    ("/images/generations", {"model": "nano-banana-pro", "prompt": "a\u0000lighthouse"}, "prompt"),
    ("/images/generations", {"prompt": "ok", "user": "\u0000"}, "user"),
    ("/videos", {"model": "vo3", "prompt": "waves\u0000"}, "prompt"),
])
def test_a_nul_in_a_stored_field_is_a_400_naming_it_and_changes_nothing(
        gw: Gateway, path: str, body: dict[str, Any], param: str) -> None:
    account = gw.account("plus")
    before = _counts(gw.engine, account.account_id)
    response = httpx.post(gw.api + path, json=body, headers=account.headers, timeout=10)
    error = assert_envelope(response, 400, "invalid_request_error", param=param)
    assert "NUL character" in error["message"]
    assert _counts(gw.engine, account.account_id) == before


def test_a_nul_in_a_chat_message_is_passed_on_not_refused(gw: Gateway) -> None:
    """Chat messages are not stored: the provider decides what they may hold."""
    account = gw.account()
    response = httpx.post(gw.api + "/chat/completions", headers=account.headers, timeout=10,
                          json={"model": "helyx-3.5", "messages": [{"role": "user", "content": "a\u0000b"}]})
    assert response.status_code == 200, response.text


# --- the database's own refusal ------------------------------------------------------------------

@pytest.mark.postgres
def test_postgresqls_refusals_of_nul_text_are_recognised(pg_engine: Engine) -> None:
    with pytest.raises(Exception) as client_side, pg_engine.connect() as conn:
        conn.execute(text("SELECT CAST(:v AS text)"), {"v": "a\x00b"})
    with pytest.raises(Exception) as server_side, pg_engine.connect() as conn:
        conn.execute(text("SELECT CAST(:v AS jsonb) ->> 'p'"), {"v": '{"p": "a\\u0000b"}'})
    pg = AsyncStatements.for_engine(pg_engine)
    assert pg is not None

    async def on_the_event_loop() -> BaseException:
        try:
            await pg.first_row(text("SELECT CAST(:v AS text)"), {"v": "a\x00b"})
        except Exception as exc:  # noqa: BLE001 - the one under test
            return exc
        finally:
            await pg.close_idle()
        raise AssertionError("no error")

    async_error = asyncio.run(on_the_event_loop())
    for exc in (client_side.value, server_side.value, async_error):
        assert isinstance(exc, errors._data_exceptions()), repr(exc)
        assert errors._is_nul_text(exc), repr(exc)


@pytest.mark.parametrize("exc", [psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
                                 psycopg.DataError("invalid input syntax for type integer: \"x\"")])
def test_the_databases_refusal_of_nul_text_is_a_400_and_other_data_errors_stay_500(
        exc: Exception, tmp_path: Path) -> None:
    from api.app import create_app

    app = create_app(make_settings(tmp_path))

    async def boom() -> None:
        raise exc

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    if "NUL" in str(exc):
        assert_envelope(response, 400, "invalid_request_error", code="invalid_characters")
        assert response.headers["x-should-retry"] == "false"
    else:
        assert_envelope(response, 500, "server_error")
