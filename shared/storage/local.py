"""Local-directory object store: development, tests, and a single machine.

Layout: ``<root>/<namespace>/<key>``. Writes go to a temp file in the same directory and are
moved into place with ``os.replace`` (atomic on POSIX), ``concat`` included. The etag is a
hash of the content (``stat`` hashes the file in chunks); ``stream`` seeks.
Conditional writes hold an exclusive ``fcntl.flock`` on ``<root>/<namespace>/.lock`` around
check-and-replace, so they are safe across threads and processes sharing the directory
(devhost, a test process and a worker may all use the same store).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from shared.storage.base import (
    Condition,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    Reader,
    StoredObject,
    read_chunks,
)

_LOCK_NAME = ".lock"
_TMP_PREFIX = ".tmp-"


def content_etag(data: bytes) -> str:
    return _etag_of(hashlib.sha256(data))


def _etag_of(digest: hashlib._Hash) -> str:
    return '"' + digest.hexdigest()[:32] + '"'


class LocalStore(ObjectStore):
    def __init__(self, root: Path | str, namespace: str) -> None:
        self.namespace = namespace
        self.base = Path(root).resolve() / namespace
        self.base.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.Lock()

    def _path(self, key: str) -> Path:
        clean = key.strip("/")
        parts = clean.split("/")
        if not clean or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise ValueError(f"invalid object key {key!r}")
        return self.base.joinpath(*parts)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, open(self.base / _LOCK_NAME, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def get(self, key: str) -> StoredObject | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return StoredObject(data=data, etag=content_etag(data))

    def _put(self, key: str, data: bytes, cond: Condition, content_type: str) -> str:
        path = self._path(key)
        if not cond.conditional:
            self._write(path, (data,))
            return content_etag(data)
        with self._locked():
            current = self.get(key)
            if not cond.allows(None if current is None else current.etag):
                why = "already exists" if cond.if_none_match else "changed (etag mismatch)"
                raise PreconditionFailed(f"{self.namespace}/{key} {why}")
            self._write(path, (data,))
        return content_etag(data)

    def _put_stream(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        self._write(self._path(key), chunks)

    def _write(self, path: Path, chunks: Iterable[bytes]) -> None:
        """Write to a temp file beside ``path``, then move it into place (atomic); an error,
        from the disk or from ``chunks``, removes the temp file and leaves ``path`` as it was."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.namespace}/{key} does not exist") from None

    def open_read(self, key: str) -> Reader:
        return self._open(key)

    def stat(self, key: str) -> ObjectInfo | None:
        """The etag is the content's hash, so the file is read, in chunks, never whole."""
        digest = hashlib.sha256()
        size = 0
        try:
            with self._open(key) as fh:
                for chunk in read_chunks(fh):
                    digest.update(chunk)
                    size += len(chunk)
        except ObjectNotFound:
            return None
        return ObjectInfo(size, _etag_of(digest))

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and start >= end:
            return
        with self._open(key) as fh:
            fh.seek(start)
            yield from read_chunks(fh, None if end is None else end - start)

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.base)
            for name in filenames:
                if name.startswith("."):
                    continue
                key = (rel / name).as_posix() if rel.parts else name
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()
