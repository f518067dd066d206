"""Local-directory object store: development, tests, and a single machine.

Layout: ``<root>/<namespace>/<key>``. Writes go to a temp file in the same directory and are
moved into place with ``os.replace`` (atomic on POSIX). The etag is a hash of the content.
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
from collections.abc import Iterator
from pathlib import Path

from shared.storage.base import ObjectNotFound, PreconditionFailed, Reader, StoredObject

_LOCK_NAME = ".lock"
_TMP_PREFIX = ".tmp-"


def content_etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


class LocalStore:
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

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        path = self._path(key)
        if if_match is None and not if_none_match:
            self._write(path, data)
            return content_etag(data)
        with self._locked():
            current = self.get(key)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"{self.namespace}/{key} already exists")
            if if_match is not None and (current is None or current.etag != if_match):
                raise PreconditionFailed(f"{self.namespace}/{key} changed (etag mismatch)")
            self._write(path, data)
        return content_etag(data)

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def open_read(self, key: str) -> Reader:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.namespace}/{key} does not exist") from None

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
