from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from common.webhook_signing import (
    WebhookVerificationError,
    decode_secret,
    generate_secret,
    sign,
    verify,
)

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
NOW = 1_700_000_000
BODY = b'{"type":"job.succeeded","data":{"id":"job_1"}}'


def _headers(signature: str, timestamp: int = NOW, msg_id: str = MSG_ID) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def test_sign_matches_the_reference_library_test_vector() -> None:
    # From standard-webhooks/libraries/python/tests/test_webhooks.py (test_sign_function).
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_matches_an_independently_computed_hmac() -> None:
    digest = hmac.new(KEY, f"{MSG_ID}.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    assert sign(KEY, MSG_ID, NOW, BODY) == expected
    assert sign(SECRET, MSG_ID, NOW, BODY) == expected
    assert sign(SECRET.encode(), MSG_ID, NOW, BODY) == expected


def test_secrets_decode_from_every_accepted_form() -> None:
    assert decode_secret(SECRET) == KEY
    assert decode_secret(SECRET.encode()) == KEY
    assert decode_secret(SECRET.removeprefix("whsec_")) == KEY
    assert decode_secret(KEY) == KEY
    generated = generate_secret()
    assert generated.startswith("whsec_") and len(decode_secret(generated)) == 32


@pytest.mark.parametrize("bad", ["", "whsec_", b"", "whsec_not base64!"])
def test_malformed_secrets_are_refused(bad: str | bytes) -> None:
    with pytest.raises(ValueError):
        decode_secret(bad)


def test_ids_containing_a_dot_cannot_be_signed() -> None:
    with pytest.raises(ValueError):
        sign(KEY, "msg.1", NOW, BODY)


def test_a_valid_delivery_verifies() -> None:
    verify(SECRET, BODY, _headers(sign(SECRET, MSG_ID, NOW, BODY)), now=NOW)


def test_header_names_are_case_insensitive() -> None:
    headers = {k.title(): v for k, v in _headers(sign(SECRET, MSG_ID, NOW, BODY)).items()}
    verify(SECRET, BODY, headers, now=NOW)


def test_any_one_of_several_signatures_suffices() -> None:
    good = sign(SECRET, MSG_ID, NOW, BODY)
    other = sign(generate_secret(), MSG_ID, NOW, BODY)
    header = f"{other} v1a,bm90LWNoZWNrZWQ= garbage v1,!!! {good}"
    verify(SECRET, BODY, _headers(header), now=NOW)


@pytest.mark.parametrize("offset", [-301, 301])
def test_timestamps_outside_the_tolerance_are_refused(offset: int) -> None:
    timestamp = NOW + offset
    headers = _headers(sign(SECRET, MSG_ID, timestamp, BODY), timestamp=timestamp)
    with pytest.raises(WebhookVerificationError, match="too"):
        verify(SECRET, BODY, headers, now=NOW)
    verify(SECRET, BODY, headers, now=NOW, tolerance=400)


def test_a_tampered_body_id_or_timestamp_is_refused() -> None:
    signature = sign(SECRET, MSG_ID, NOW, BODY)
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, BODY + b" ", _headers(signature), now=NOW)
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, BODY, _headers(signature, msg_id="msg_other"), now=NOW)
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, BODY, _headers(signature, timestamp=NOW + 1), now=NOW)


def test_the_wrong_secret_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(generate_secret(), BODY, _headers(sign(SECRET, MSG_ID, NOW, BODY)), now=NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_refused(missing: str) -> None:
    headers = _headers(sign(SECRET, MSG_ID, NOW, BODY))
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(SECRET, BODY, headers, now=NOW)


@pytest.mark.parametrize("timestamp", ["soon", "1.5e9", "-1", ""])
def test_malformed_timestamps_are_refused(timestamp: str) -> None:
    headers = _headers(sign(SECRET, MSG_ID, NOW, BODY))
    headers["webhook-timestamp"] = timestamp
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, BODY, headers, now=NOW)
