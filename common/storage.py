"""Where result files live: a small interface, and the local-disk implementation.

Keys are relative, slash-separated paths such as `jobs/<job_id>/0.png`. The interface is narrow on
purpose so that an object store can replace the local disk without touching callers. A missing key
raises `FileNotFoundError` (from `open`, `iter_chunks` and `size`); a malformed key raises
`InvalidStorageKey` before anything touches the disk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Iterator
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_KEY_LENGTH = 1024


class InvalidStorageKey(ValueError):
    """The key is not a plain relative path (traversal, absolute, backslash, NUL, hidden part)."""


@runtime_checkable
class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> int:
        """Store `data` under `key`, replacing any previous object atomically; bytes written."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A binary file object positioned at the start; the caller closes it."""
        ...

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE, *, start: int = 0,
                    length: int | None = None) -> Iterator[bytes]:
        """The object's bytes in chunks, for streaming responses: `length` bytes from `start` (to
        the end when None). Raises at call time if missing."""
        ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is a no-op."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str, keep: Collection[str] = ()) -> int:
        """Remove every object whose key starts with `prefix` + "/", except the keys in `keep`; how
        many were removed."""
        ...


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative path, else raise `InvalidStorageKey`.

    Parts starting with a dot are refused too: that keeps temporary files and the URL-signing
    key (`.signing-key`, stored in the same directory) out of reach of any key.
    """
    if not isinstance(key, str) or not key:
        raise InvalidStorageKey("storage key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidStorageKey("storage key is too long")
    if "\x00" in key or "\\" in key:
        raise InvalidStorageKey("storage key must not contain NUL or backslashes")
    if key.startswith("/"):
        raise InvalidStorageKey("storage key must be relative")
    for part in key.split("/"):
        if not part or part.startswith("."):
            raise InvalidStorageKey(f"storage key has an empty, '.', '..' or hidden part: {key!r}")
    return key


class LocalStorage(Storage):
    """Files under one root directory; writes are atomic (temp file, fsync, rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = Path(os.path.realpath(self.root))

    def path_for(self, key: str) -> Path:
        """The file behind `key`; refuses a path that a symlink would lead out of the root."""
        path = self.root / validate_key(key)
        real = Path(os.path.realpath(path))
        if real != self._real_root and self._real_root not in real.parents:
            raise InvalidStorageKey(f"storage key leaves the storage root: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> int:
        # Local disk keeps no metadata: the caller records content_type next to the key.
        path = self.path_for(key)
        fd, tmp = self._temporary_beside(path)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_directory(path.parent)
        return len(data)

    def open(self, key: str) -> BinaryIO:
        return self.path_for(key).open("rb")

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE, *, start: int = 0,
                    length: int | None = None) -> Iterator[bytes]:
        if chunk_size <= 0 or start < 0 or (length is not None and length < 0):
            raise ValueError("chunk_size must be positive, start and length not negative")
        handle = self.open(key)  # opened now, so a missing key fails before a response starts
        try:
            handle.seek(start)
        except BaseException:
            handle.close()
            raise
        return _read_chunks(handle, chunk_size, length)

    def size(self, key: str) -> int:
        return self.path_for(key).stat().st_size

    def _temporary_beside(self, path: Path) -> tuple[int, str]:
        """A temporary file in `path`'s directory, made if missing, and made again if a delete of
        another file there pruned it meanwhile (`_prune`)."""
        for _ in range(3):
            try:  # (mkdir too: a prune may remove the parent it just made before it makes the child)
                path.parent.mkdir(parents=True, exist_ok=True)
                return tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
            except FileNotFoundError:
                continue
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=".tmp-", dir=path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove `directory` and then its parents, up to the root, while they are empty: a job's
        directory (and its account's) goes with its last file, where each job left one behind."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty, or gone already
                return
            directory = directory.parent

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        path.unlink(missing_ok=True)
        self._prune(path.parent)

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def delete_prefix(self, prefix: str, keep: Collection[str] = ()) -> int:
        directory = self.path_for(prefix)
        kept = {self.path_for(key) for key in keep}
        removed = 0
        for path in sorted(directory.rglob("*"), reverse=True) if directory.is_dir() else []:
            if path.is_dir():
                with suppress(OSError):  # not empty: something is kept there
                    path.rmdir()
            elif path not in kept:
                path.unlink(missing_ok=True)
                removed += 1
        self._prune(directory)
        return removed


def _read_chunks(handle: BinaryIO, chunk_size: int, length: int | None) -> Iterator[bytes]:
    """Up to `length` bytes (all that is left when None) from where `handle` stands."""
    with handle:
        left = length
        while left is None or left > 0:
            chunk = handle.read(chunk_size if left is None else min(chunk_size, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; not every platform lets a directory be fsynced."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
