"""A list filter or cursor the route cannot honour is refused with a 400 that says why, never
silently ignored: GET /jobs (status, after), GET /usage (cursor as after)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.api.test_errors import assert_envelope
from tests.conftest import ADMIN_TOKEN, TestAccount, create_test_account

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def image_job(client: TestClient, account: TestAccount) -> str:
    response = client.post("/api/v1/images/generations", json={"prompt": "a cat"},
                           headers={**account.headers, "Prefer": "respond-async"})
    assert response.status_code in (200, 202), response.text
    return str(response.json()["helyx"]["job_id"])


def test_jobs_filter_by_status_and_refuse_a_status_there_is_not(app_client: TestClient, account: TestAccount) -> None:
    done = image_job(app_client, account)
    canceled = image_job(app_client, account)
    app_client.post(f"/api/v1/jobs/{canceled}/cancel", headers=account.headers)  # may have finished already
    statuses = {j["id"]: j["status"] for j in app_client.get("/api/v1/jobs", headers=account.headers).json()["data"]}
    assert set(statuses) == {done, canceled}
    for status in ("succeeded", "canceled", "queued"):
        listed = app_client.get(f"/api/v1/jobs?status={status}", headers=account.headers).json()["data"]
        assert [j["id"] for j in listed] == [i for i in (canceled, done) if statuses[i] == status], status
    for bogus in ("bogus", ""):
        assert_envelope(app_client.get(f"/api/v1/jobs?status={bogus}", headers=account.headers), 400,
                        "invalid_request_error", param="status")


def test_jobs_after_must_be_one_of_the_callers_jobs_never_silently_ignored(app_client: TestClient, account: TestAccount,
                                                    engine: Engine) -> None:
    mine = [image_job(app_client, account) for _ in range(2)]
    other = create_test_account(engine)
    theirs = image_job(app_client, other)

    first = app_client.get("/api/v1/jobs?limit=1", headers=account.headers).json()
    assert first["has_more"] and first["last_id"] == mine[1]
    second = app_client.get(f"/api/v1/jobs?limit=1&after={first['last_id']}", headers=account.headers)
    assert [j["id"] for j in second.json()["data"]] == [mine[0]], second.text

    for malformed in ("nope", "", "job_XYZ"):  # the same on both lists (an empty one restarted /videos at the top)
        for listing in ("jobs", "videos"):
            assert_envelope(app_client.get(f"/api/v1/{listing}?after={malformed}", headers=account.headers), 400,
                            "invalid_request_error", param="after")
    unknown, foreign = (app_client.get(f"/api/v1/jobs?after={after}", headers=account.headers)
                        for after in ("job_" + "0" * 24, theirs))
    videos = app_client.get(f"/api/v1/videos?after={theirs}", headers=account.headers)  # the same rule
    for response in (unknown, foreign, videos):
        assert_envelope(response, 404, "not_found_error", param="after", code="job_not_found")
    # another account's job reads exactly as no job at all
    assert foreign.json()["error"]["message"].replace(theirs, "X") == \
        unknown.json()["error"]["message"].replace("job_" + "0" * 24, "X")


def test_usage_takes_cursor_as_after_and_refuses_a_bad_one(app_client: TestClient, account: TestAccount) -> None:
    for _ in range(3):
        app_client.post(f"/admin/accounts/{account.account_id}/credits", json={"amount": 1}, headers=ADMIN)
    first = app_client.get("/api/v1/usage?limit=2", headers=account.headers).json()
    assert first["has_more"] and first["next_cursor"] is not None
    by_after = app_client.get(f"/api/v1/usage?limit=2&after={first['next_cursor']}", headers=account.headers)
    by_cursor = app_client.get(f"/api/v1/usage?limit=2&cursor={first['next_cursor']}", headers=account.headers)
    assert by_cursor.status_code == 200 and by_cursor.json()["data"] == by_after.json()["data"]
    assert by_cursor.json()["data"] != first["data"]

    assert_envelope(app_client.get("/api/v1/usage?cursor=abc", headers=account.headers), 400,
                    "invalid_request_error", param="cursor")
    assert_envelope(app_client.get("/api/v1/usage?cursor=5&after=6", headers=account.headers), 400,
                    "invalid_request_error", param="cursor")
