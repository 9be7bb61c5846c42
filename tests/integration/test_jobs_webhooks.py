"""Job webhooks: a real `helyx serve` (self-contained, HELYX_WEBHOOK_ALLOW_PRIVATE=1) calls a local
receiver once with the finished job, signed per Standard Webhooks with the account's secret from
GET /api/v1/webhooks/secret (checked with common.webhook_signing.verify AND an independent HMAC);
with private targets not allowed, loopback/private/metadata URLs are refused at submission."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from common.db import make_engine
from common.migrate import upgrade
from common.webhook_signing import WebhookVerificationError, verify
from tests.api.chat.helpers import assert_books_balance, books
from tests.conftest import TestAccount, create_test_account, make_settings
from tests.integration.helpers_processes import Processes, base_env, free_port
from tests.integration.webhook_receiver import Receiver


def independent_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks v1, computed here from the spec alone (no Helyx code)."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_a_finished_job_is_posted_once_to_its_webhook_signed_with_the_accounts_secret(
        receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    recorder, receiver_url = receiver
    recorder.fail_first["/flaky"] = 1
    data = tmp_path / "data"
    port = free_port()
    env = base_env(database_url=f"sqlite:///{data / 'helyx.db'}", storage_dir=data / "files",
                   simulated_job_seconds=0.2, webhook_allow_private=1, webhook_backoff_seconds=0.2,
                   public_url=f"http://127.0.0.1:{port}")
    engine = make_engine(env["HELYX_DATABASE_URL"])
    upgrade(engine)
    account, other = create_test_account(engine, "free"), create_test_account(engine, "free")

    with Processes(tmp_path / "procs") as procs:
        api = procs.serve(env, port=port)
        with httpx.Client(base_url=api.api, headers=account.headers, timeout=30, trust_env=False) as http:
            job = http.post("/images/generations", headers={"Prefer": "respond-async"},
                            json={"prompt": "ring the bell", "size": "256x256",
                                  "webhook_url": f"{receiver_url}/hook"}).json()
            flaky = http.post("/images/generations", headers={"Prefer": "respond-async"},
                              json={"prompt": "ring twice", "size": "256x256",
                                    "webhook_url": f"{receiver_url}/flaky"}).json()
            secret = http.get("/webhooks/secret").json()["secret"]
            other_secret = http.get("/webhooks/secret", headers=other.headers).json()["secret"]
            [delivery] = recorder.wait("/hook", 1)
            retried = recorder.wait("/flaky", 2)
            time.sleep(0.5)  # nothing more arrives
            assert len(recorder.to("/hook")) == 1 and len(recorder.to("/flaky")) == 2

            # the receiver's side: the documented headers, a fresh timestamp, a valid signature
            headers = delivery.headers
            assert headers["content-type"] == "application/json"
            assert headers["webhook-id"] == f"msg_{job['id']}"
            assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
            verify(secret, delivery.body, headers)
            assert independent_signature(secret, headers["webhook-id"], headers["webhook-timestamp"],
                                         delivery.body) in headers["webhook-signature"].split()
            with pytest.raises(WebhookVerificationError):
                verify(other_secret, delivery.body, headers)  # another account's secret does not fit
            with pytest.raises(WebhookVerificationError):
                verify(secret, delivery.body.replace(b"succeeded", b"failed"), headers)

            payload = httpx.Response(200, content=delivery.body).json()
            assert payload["type"] == "job.succeeded"
            assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "succeeded"
            assert payload["data"]["helyx"]["credits_charged"] == 200
            file_url = payload["data"]["result"]["files"][0]["url"]
            assert file_url.startswith(f"http://127.0.0.1:{port}/api/v1/files/")
            with httpx.Client(trust_env=False, timeout=10) as plain:
                assert plain.get(file_url).headers["content-type"] == "image/png"  # no key needed

            # a retried delivery keeps its id, and each attempt is signed
            assert {d.headers["webhook-id"] for d in retried} == {f"msg_{flaky['id']}"}
            for attempt in retried:
                verify(secret, attempt.body, attempt.headers)
        api.terminate(timeout=15)

    assert _webhook_status(engine, job["id"]) == _webhook_status(engine, flaky["id"]) == "delivered"
    assert_books_balance(engine, account.account_id)
    engine.dispose()


def _webhook_status(engine: Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT webhook_status FROM jobs WHERE id = :id"), {"id": job_id}).scalar()


REFUSED_TARGETS = [
    "http://127.0.0.1:{port}/hook",  # the live receiver itself
    "http://localhost:{port}/hook",
    "http://[::1]:{port}/hook",
    "http://[::ffff:127.0.0.1]:{port}/hook",
    "http://10.0.0.5/hook",
    "http://172.16.0.1/hook",
    "http://192.168.0.10/hook",
    "http://100.64.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://0.0.0.0/hook",
    "http://2130706433/hook",  # 127.0.0.1 as one integer
]


def test_private_loopback_and_metadata_targets_are_refused_at_submission_and_no_job_is_made(
        receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    recorder, receiver_url = receiver
    port = int(receiver_url.rsplit(":", 1)[1])
    settings = make_settings(tmp_path, webhook_allow_private=False, rate_limit_plus=10_000)
    from api.app import create_app

    engine = make_engine(settings.database_url)
    upgrade(engine)
    account: TestAccount = create_test_account(engine, "plus")
    before = books(engine, account.account_id)
    with TestClient(create_app(settings)) as client:
        for target in REFUSED_TARGETS:
            url = target.format(port=port)
            for path, body in (("/api/v1/images/generations", {"prompt": "x", "size": "256x256"}),
                               ("/api/v1/videos", {"model": "vo3", "prompt": "x"})):
                response = client.post(path, headers=account.headers, json={**body, "webhook_url": url})
                assert response.status_code == 400, (url, response.text)
                error = response.json()["error"]
                assert error["type"] == "invalid_request_error" and error["param"] == "webhook_url", (url, error)

    with engine.connect() as conn:
        counts = [conn.execute(text(f"SELECT COUNT(*) FROM {t} WHERE account_id = :a"),
                               {"a": account.account_id}).scalar() for t in ("jobs", "holds")]
    assert counts == [0, 0]
    assert books(engine, account.account_id) == before
    assert recorder.deliveries == []
    engine.dispose()
