"""Inline images of the types a vendor takes, labelled by their bytes (found by a review of the
vendors' documentation): Anthropic takes jpeg, png, gif and webp and refuses bytes that do not match
the type sent; Gemini takes png, jpeg, webp, heic and heif. An image of a type the vendor refuses is a
400 of ours naming the part, before anything is held (the vendor's 400 came after the hold, as a
502); a loosely labelled one (`image/jpg`, a PNG labelled jpeg) is sent under what its bytes are."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from common.providers.image_types import media_type
from tests.api.chat.helpers import Gateway, assert_books_balance, books
from tests.api.chat.test_unsupported_params import ledger_rows
from tests.fakes import FakeUpstream

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(20)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(20)
GIF = b"GIF89a\x01\x00\x01\x00" + bytes(20)
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8 " + bytes(20)
BMP = b"BM" + bytes(30)
HEIC = b"\x00\x00\x00\x18ftypheic" + bytes(20)


def data_url(declared: str, data: bytes) -> str:
    return f"data:{declared};base64,{base64.b64encode(data).decode()}"


def asking_about(url: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.mark.parametrize(("declared", "data", "sent"), [
    ("image/png", PNG, "image/png"),
    ("image/jpeg", PNG, "image/png"),  # the bytes win over the label
    ("image/jpg", JPEG, "image/jpeg"),
    ("", JPEG, "image/jpeg"),
    ("image/png", GIF, "image/gif"),
    ("image/png", WEBP, "image/webp"),
    ("IMAGE/HEIC", HEIC, "image/heic"),  # not recognised: the label, lower-cased
    ("image/JPG", b"??", "image/jpeg"),
    ("", b"??", "image/png"),
])
def test_an_inline_images_type_is_what_its_bytes_say(declared: str, data: bytes, sent: str) -> None:
    assert media_type(declared or None, base64.b64encode(data).decode()) == sent
    assert media_type(declared or None, base64.urlsafe_b64encode(data).decode()) == sent


@pytest.fixture
def vendors(upstream_gateway: Callable[..., Gateway], anthropic_fake: FakeUpstream,
            gemini_fake: FakeUpstream) -> Gateway:
    return upstream_gateway(anthropic=anthropic_fake, gemini=gemini_fake)


NOT_RECOGNISED = "and this one's bytes are not a PNG, JPEG, GIF or WebP image"


@pytest.mark.parametrize(("model", "url", "said"), [
    ("claude-3-5-sonnet", data_url("image/bmp", BMP), "not image/bmp"),
    ("claude-3-5-sonnet", data_url("image/heic", HEIC), "not image/heic"),
    ("gemini-1-5-pro", data_url("image/gif", GIF), "not image/gif"),
    ("gemini-1-5-pro", data_url("image/png", GIF), "not image/gif"),  # a GIF labelled png is still a GIF
    # bytes labelled as a type they are not (a review): the vendor's 400 came after the hold
    ("claude-3-5-sonnet", data_url("image/png", BMP), NOT_RECOGNISED + " (labelled image/png)"),
    ("claude-3-5-sonnet", data_url("image/webp", BMP), NOT_RECOGNISED + " (labelled image/webp)"),
    ("claude-3-5-sonnet", data_url("", BMP), NOT_RECOGNISED + ";"),
    ("gemini-1-5-pro", data_url("image/jpeg", HEIC), NOT_RECOGNISED + " (labelled image/jpeg)"),
])
def test_an_image_type_the_vendor_refuses_is_a_400_naming_the_part_that_holds_nothing(
        vendors: Gateway, anthropic_fake: FakeUpstream, gemini_fake: FakeUpstream,
        model: str, url: str, said: str) -> None:
    account = vendors.account()
    before, rows = books(vendors.engine, account.account_id), ledger_rows(vendors.engine, account.account_id)
    with vendors.http(account) as http:
        answer = http.post("/chat/completions", json={"model": model, "messages": asking_about(url)})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == ("messages.0.content.1", "unsupported_image_type"), error
    assert said in error["message"], error
    assert anthropic_fake.request_count == 0 and gemini_fake.request_count == 0
    assert assert_books_balance(vendors.engine, account.account_id) == before
    assert ledger_rows(vendors.engine, account.account_id) == rows


def test_anthropic_is_sent_the_type_the_bytes_show(vendors: Gateway, anthropic_fake: FakeUpstream) -> None:
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": data_url("image/jpg", JPEG)}},
        {"type": "image_url", "image_url": {"url": data_url("image/jpeg", PNG)}},
    ]}]
    with vendors.sdk(vendors.account("pro")) as client:
        client.chat.completions.create(model="claude-3-5-sonnet", messages=messages, max_tokens=5)  # type: ignore[arg-type]
    blocks = anthropic_fake.last_request.json["messages"][0]["content"]
    assert [b["source"]["media_type"] for b in blocks if b["type"] == "image"] == ["image/jpeg", "image/png"]


def test_gemini_is_sent_the_type_the_bytes_show(vendors: Gateway, gemini_fake: FakeUpstream) -> None:
    with vendors.sdk(vendors.account("pro")) as client:
        client.chat.completions.create(model="gemini-1-5-pro", messages=asking_about(data_url("image/jpeg", WEBP)),  # type: ignore[arg-type]
                                       max_tokens=5)
    parts = gemini_fake.last_request.json["contents"][0]["parts"]
    assert [p["inlineData"]["mimeType"] for p in parts if "inlineData" in p] == ["image/webp"]


def test_gemini_takes_an_image_labelled_as_a_type_it_takes_whose_bytes_are_not_recognised(
        vendors: Gateway, gemini_fake: FakeUpstream) -> None:
    with vendors.sdk(vendors.account("pro")) as client:
        client.chat.completions.create(model="gemini-1-5-pro", messages=asking_about(data_url("image/HEIC", HEIC)),  # type: ignore[arg-type]
                                       max_tokens=5)
    parts = gemini_fake.last_request.json["contents"][0]["parts"]
    assert [p["inlineData"]["mimeType"] for p in parts if "inlineData" in p] == ["image/heic"]
