from __future__ import annotations

import base64
import hashlib
import hmac
import multiprocessing
import stat
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from common.signing import (
    SECRET_FILE_NAME,
    file_signature,
    load_or_create_secret,
    sign_file_url,
    verify_file_signature,
)

SECRET = b"s" * 32
NOW = 1_700_000_000


def _query(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return parts.path, query["expires"][0], query["signature"][0]


def test_signed_url_has_the_documented_shape() -> None:
    url = sign_file_url("/api/v1/", "file_abc", NOW + 3600, SECRET)
    path, expires, signature = _query(url)
    assert path == "/api/v1/files/file_abc/content"
    assert expires == str(NOW + 3600)
    assert "=" not in signature and len(signature) == 43


def test_signature_matches_an_independent_hmac() -> None:
    message = b"helyx-file-v1\nfile_abc\n" + str(NOW).encode()
    expected = base64.urlsafe_b64encode(hmac.new(SECRET, message, hashlib.sha256).digest()).rstrip(b"=")
    assert file_signature("file_abc", NOW, SECRET) == expected.decode()


def test_a_fresh_signed_url_verifies() -> None:
    _, expires, signature = _query(sign_file_url("/api/v1", "file_abc", NOW + 60, SECRET))
    assert verify_file_signature("file_abc", expires, signature, SECRET, now=NOW)
    assert verify_file_signature("file_abc", int(expires), signature, SECRET, now=NOW + 59)


def test_an_expired_url_fails() -> None:
    _, expires, signature = _query(sign_file_url("/api/v1", "file_abc", NOW + 60, SECRET))
    assert not verify_file_signature("file_abc", expires, signature, SECRET, now=NOW + 60)
    assert not verify_file_signature("file_abc", expires, signature, SECRET, now=NOW + 3600)


def test_tampering_with_any_part_fails() -> None:
    _, expires, signature = _query(sign_file_url("/api/v1", "file_abc", NOW + 60, SECRET))
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert not verify_file_signature("file_abc", expires, flipped, SECRET, now=NOW)
    assert not verify_file_signature("file_abc", str(NOW + 6000), signature, SECRET, now=NOW)
    assert not verify_file_signature("file_abc", "0" + expires, signature, SECRET, now=NOW)  # (a security review)
    assert not verify_file_signature("file_xyz", expires, signature, SECRET, now=NOW)
    assert not verify_file_signature("file_abc", expires, signature, b"other-secret", now=NOW)


@pytest.mark.parametrize(
    ("expires", "signature"),
    [
        (None, "x" * 43),
        ("", "x" * 43),
        ("-5", "x" * 43),
        ("1e12", "x" * 43),
        ("99999999999999999999", "x" * 43),
        (True, "x" * 43),
        (str(NOW + 60), None),
        (str(NOW + 60), ""),
        (str(NOW + 60), "x" * 42),
        (str(NOW + 60), "x" * 42 + "="),
        (str(NOW + 60), "é" * 43),
    ],
)
def test_malformed_parameters_fail_without_raising(expires: object, signature: object) -> None:
    assert not verify_file_signature("file_abc", expires, signature, SECRET, now=NOW)  # type: ignore[arg-type]


def test_file_ids_are_escaped_in_the_path() -> None:
    url = sign_file_url("/api/v1", "a/b?c", NOW + 60, SECRET)
    assert urlsplit(url).path == "/api/v1/files/a%2Fb%3Fc/content"


def test_a_configured_secret_wins_and_writes_nothing(tmp_path: Path) -> None:
    assert load_or_create_secret("configured-secret", tmp_path) == b"configured-secret"
    assert not (tmp_path / SECRET_FILE_NAME).exists()


def test_a_generated_secret_is_private_and_stable(tmp_path: Path) -> None:
    storage_dir = tmp_path / "files"
    first = load_or_create_secret(None, storage_dir)
    assert len(base64.urlsafe_b64decode(first + b"=")) == 32
    assert load_or_create_secret(None, storage_dir) == first
    assert load_or_create_secret("", storage_dir) == first
    assert stat.S_IMODE((storage_dir / SECRET_FILE_NAME).stat().st_mode) == 0o600
    assert [p.name for p in storage_dir.iterdir()] == [SECRET_FILE_NAME]  # no temp file left


def test_the_generated_file_content_works_as_the_configured_secret(tmp_path: Path) -> None:
    generated = load_or_create_secret(None, tmp_path)
    copied = (tmp_path / SECRET_FILE_NAME).read_text().strip()
    assert load_or_create_secret(copied, tmp_path / "elsewhere") == generated


def _race(storage_dir: str, barrier: Barrier, results: Queue[bytes]) -> None:
    barrier.wait()
    results.put(load_or_create_secret(None, Path(storage_dir)))


def test_processes_racing_to_create_the_secret_agree(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    for round_number in range(2):
        storage_dir = tmp_path / f"round-{round_number}"
        barrier = ctx.Barrier(6)
        results: Queue[bytes] = ctx.Queue()
        workers = [ctx.Process(target=_race, args=(str(storage_dir), barrier, results)) for _ in range(6)]
        for worker in workers:
            worker.start()
        secrets = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        assert len(set(secrets)) == 1
        assert secrets[0] == (storage_dir / SECRET_FILE_NAME).read_bytes().strip()
