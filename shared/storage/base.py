"""The object-store seam: a small sync protocol that local, Azure Blob and S3 providers share.

    StorageError
    ├── PreconditionFailed   a conditional write lost (``if_match`` / ``if_none_match``)
    └── ObjectNotFound       ``open_read`` / ``delete`` of a key that does not exist

Every provider gives the same guarantees, so code written against ``ObjectStore`` (the job
store, the batch checkpoints) runs unchanged on every platform:

- ``put`` is atomic: a reader sees the old object or the new one, never a partial write.
- ``put(if_none_match=True)`` creates only when the key does not exist;
  ``put(if_match=etag)`` replaces only the version whose etag is ``etag`` (compare-and-swap).
  Either fails with ``PreconditionFailed`` and changes nothing.
- ``etag`` is opaque: compare it, never parse it.
- ``open_read`` streams: it never reads the whole object into memory up front.

The protocol is synchronous (the SDKs are); async callers wrap calls in
``asyncio.to_thread``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class StorageError(Exception):
    """A storage operation failed (the provider's error is chained)."""


class PreconditionFailed(StorageError):
    """A conditional write did not apply: the object changed, or exists, or is missing."""


class ObjectNotFound(StorageError):
    """The key does not exist."""


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str


class Reader(Protocol):
    """What ``open_read`` returns: a binary file-like object read in pieces, then closed."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class ObjectStore(Protocol):
    """Keys are ``/``-separated paths inside the store's namespace (container or prefix)."""

    namespace: str

    def get(self, key: str) -> StoredObject | None:
        """The object and its etag, or ``None`` when the key does not exist."""
        ...

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        """Write atomically, return the new etag; ``PreconditionFailed`` if a condition fails."""
        ...

    def open_read(self, key: str) -> Reader:
        """A streamed reader of the object; ``ObjectNotFound`` when it does not exist."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys that start with ``prefix``, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the key; deleting a missing key is not an error."""
        ...
