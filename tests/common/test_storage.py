from __future__ import annotations

import os
from pathlib import Path

import pytest

from common import storage as storage_module
from common.storage import InvalidStorageKey, LocalStorage, Storage


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "files")


def test_local_storage_satisfies_the_storage_interface(store: LocalStorage) -> None:
    assert isinstance(store, Storage)


def test_put_then_read_back_in_every_way(store: LocalStorage) -> None:
    data = os.urandom(200_000)
    assert store.put("jobs/j1/0.png", data, "image/png") == len(data)
    assert store.exists("jobs/j1/0.png")
    assert store.size("jobs/j1/0.png") == len(data)
    with store.open("jobs/j1/0.png") as handle:
        assert handle.read() == data
    chunks = list(store.iter_chunks("jobs/j1/0.png", chunk_size=65536))
    assert b"".join(chunks) == data
    assert [len(chunk) for chunk in chunks[:-1]] == [65536] * (len(chunks) - 1)


@pytest.mark.parametrize(("start", "length"), [(0, 1), (1000, 65536), (65535, 2), (70_000, None), (199_999, 5),
                                               (200_000, None), (0, 0)])
def test_a_slice_is_read_from_its_start_for_its_length_in_chunks(store: LocalStorage, start: int,
                                                                 length: int | None) -> None:
    data = os.urandom(200_000)
    store.put("v.mp4", data, "video/mp4")
    chunks = list(store.iter_chunks("v.mp4", chunk_size=65536, start=start, length=length))
    assert b"".join(chunks) == data[start:None if length is None else start + length]
    assert all(0 < len(chunk) <= 65536 for chunk in chunks)


def test_put_replaces_an_existing_object(store: LocalStorage) -> None:
    store.put("a.bin", b"old", "application/octet-stream")
    store.put("a.bin", b"new contents", "application/octet-stream")
    with store.open("a.bin") as handle:
        assert handle.read() == b"new contents"


def test_the_target_is_not_visible_until_the_write_is_complete(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_during_write: list[bool] = []
    real_fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        seen_during_write.append((store.root / "jobs/x.bin").exists())
        real_fsync(fd)

    monkeypatch.setattr(storage_module.os, "fsync", spying_fsync)
    store.put("jobs/x.bin", b"payload", "application/octet-stream")
    assert seen_during_write and seen_during_write[0] is False
    assert store.exists("jobs/x.bin")


def test_a_failure_mid_write_leaves_nothing_behind(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(storage_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        store.put("jobs/j2/0.png", b"x" * 10_000, "image/png")
    assert not store.exists("jobs/j2/0.png")
    assert list((store.root / "jobs/j2").iterdir()) == []  # no temp file left either


def test_a_failed_overwrite_keeps_the_previous_object(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("keep.txt", b"original", "text/plain")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(storage_module.os, "replace", failing_replace)
    with pytest.raises(OSError):
        store.put("keep.txt", b"half-written", "text/plain")
    with store.open("keep.txt") as handle:
        assert handle.read() == b"original"
    assert sorted(p.name for p in store.root.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../escape.txt",
        "jobs/../../escape.txt",
        "jobs/..",
        "/etc/passwd",
        "jobs\\..\\escape.txt",
        "jobs/\x00.png",
        "jobs//double.png",
        "jobs/./here.png",
        "trailing/",
        ".signing-key",
        "jobs/.tmp-abc",
    ],
)
def test_unsafe_keys_are_rejected_by_every_operation(store: LocalStorage, key: str) -> None:
    with pytest.raises(InvalidStorageKey):
        store.put(key, b"x", "text/plain")
    for operation in (store.open, store.size, store.delete, store.exists, store.iter_chunks):
        with pytest.raises(InvalidStorageKey):
            operation(key)


def test_a_symlink_out_of_the_root_is_refused(store: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    (store.root / "link").symlink_to(outside)
    with pytest.raises(InvalidStorageKey):
        store.open("link/secret.txt")


def test_delete_removes_and_tolerates_missing_keys(store: LocalStorage) -> None:
    store.put("jobs/j3/0.png", b"x", "image/png")
    store.delete("jobs/j3/0.png")
    assert not store.exists("jobs/j3/0.png")
    store.delete("jobs/j3/0.png")
    store.delete("never/existed.png")


def test_missing_keys_raise_file_not_found_before_streaming(store: LocalStorage) -> None:
    with pytest.raises(FileNotFoundError):
        store.open("missing.png")
    with pytest.raises(FileNotFoundError):
        store.size("missing.png")
    with pytest.raises(FileNotFoundError):
        store.iter_chunks("missing.png")  # raised at call time, not on first iteration
    assert store.exists("missing.png") is False


def test_written_files_are_private_to_the_service(store: LocalStorage) -> None:
    store.put("jobs/j4/0.png", b"x", "image/png")
    assert (store.root / "jobs/j4/0.png").stat().st_mode & 0o077 == 0


def test_delete_prefix_removes_everything_under_it_but_what_is_kept(store: LocalStorage) -> None:
    for key in ("acct/job_1/a.png", "acct/job_1/b.png", "acct/job_1/sub/c.png", "acct/job_10/d.png"):
        store.put(key, b"x", "image/png")
    assert store.delete_prefix("acct/job_1", keep=["acct/job_1/b.png"]) == 2
    assert [store.exists(k) for k in ("acct/job_1/a.png", "acct/job_1/b.png", "acct/job_1/sub/c.png",
                                      "acct/job_10/d.png")] == [False, True, False, True]
    assert store.delete_prefix("acct/job_1") == 1 and store.delete_prefix("acct/job_1") == 0
    assert store.delete_prefix("acct/nothing-here") == 0
    with pytest.raises(InvalidStorageKey):
        store.delete_prefix("../outside")


def test_a_jobs_directory_goes_with_its_last_file_and_its_accounts_with_its_last_job(store: LocalStorage) -> None:
    """Each job's directory stayed behind, empty, once its results expired: one more directory
    per job for good (noticed in a crash drill's disk-full run)."""
    for key in ("acct_1/job_1/a.png", "acct_1/job_1/b.png", "acct_1/job_2/c.png", "acct_2/job_3/d.png"):
        store.put(key, b"x", "image/png")
    store.delete("acct_1/job_1/a.png")
    assert (store.root / "acct_1/job_1").is_dir()  # b.png is still there
    store.delete("acct_1/job_1/b.png")
    assert not (store.root / "acct_1/job_1").exists() and (store.root / "acct_1").is_dir()
    assert store.delete_prefix("acct_1/job_2") == 1
    assert not (store.root / "acct_1").exists()
    assert sorted(p.name for p in store.root.iterdir() if not p.name.startswith(".")) == ["acct_2"]
    assert store.root.is_dir() and store.exists("acct_2/job_3/d.png")
    store.delete("acct_2/job_3/d.png")
    assert store.root.is_dir()  # the root itself stays


def test_a_put_survives_its_directory_being_pruned_meanwhile(store: LocalStorage,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete of a job's last file may remove the directory between a put's mkdir and its
    temporary file: the put makes it again."""
    real_mkstemp, calls = storage_module.tempfile.mkstemp, []

    def pruned_first(*args: object, **kwargs: object) -> tuple[int, str]:
        calls.append(1)
        if len(calls) == 1:
            os.rmdir(store.root / "acct/job")
        return real_mkstemp(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(storage_module.tempfile, "mkstemp", pruned_first)
    assert store.put("acct/job/a.png", b"xyz", "image/png") == 3
    assert store.exists("acct/job/a.png") and len(calls) == 2
