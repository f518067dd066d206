"""The object-store seam: one base class that owns the flow, and a few primitives per provider.

    StorageError
    ├── PreconditionFailed   a conditional write lost (``if_match`` / ``if_none_match``)
    └── ObjectNotFound       ``open_read`` / ``stream`` / ``delete`` of a key that is missing

Every provider (``local.py``, ``azure_blob.py``, ``s3.py``) gives the same guarantees, so code
written against ``ObjectStore`` (the job store, the batch checkpoints and merges) runs
unchanged on every platform:

- ``put`` is atomic: a reader sees the old object or the new one, never a partial write.
- ``put(if_none_match=True)`` creates only when the key does not exist;
  ``put(if_match=etag)`` replaces only the version whose etag is ``etag`` (compare-and-swap).
  Either fails with ``PreconditionFailed`` and changes nothing.
- ``etag`` is opaque: compare it, never parse it.
- ``open_read`` and ``stream`` stream: they never read the whole object into memory up front.
- ``concat`` writes one object from many, streamed, and is atomic like ``put``: nothing is
  visible at the key until every part was read.

A provider implements the primitives ``get``, ``_put``, ``open_read``, ``list`` and
``delete``. ``stat``, ``stream`` and ``_put_stream`` (what ``concat`` writes through) have
plain defaults built on those, correct for any store and good for a test fake; the cloud
providers override them with the native call (HEAD, a ranged GET, a block list or a
multipart upload). Callers never ask which provider they hold.

The seam is synchronous (the SDKs are); async callers wrap calls in ``asyncio.to_thread``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

CHUNK = 4 * 1024 * 1024  # the read size of streams and merges


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


class ObjectInfo(NamedTuple):
    """What ``stat`` returns: the object's size in bytes and its etag."""

    size: int
    etag: str


@dataclass(frozen=True)
class Condition:
    """When a ``put`` applies: always (the default), only if the key is absent
    (``if_none_match``), or only over the version whose etag is ``if_match``."""

    if_match: str | None = None
    if_none_match: bool = False

    @property
    def conditional(self) -> bool:
        return self.if_none_match or self.if_match is not None

    def allows(self, current_etag: str | None) -> bool:
        """Whether the write applies over the current version (``None``: the key is absent);
        for a store that checks the condition itself, under its own lock."""
        if self.if_none_match:
            return current_etag is None
        return self.if_match is None or self.if_match == current_etag


class Reader(Protocol):
    """What ``open_read`` returns: a binary file-like object read in pieces, then closed."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def read_chunks(reader: Reader, length: int | None = None) -> Iterator[bytes]:
    """The next ``length`` bytes of ``reader`` (all that is left when ``None``), in chunks
    of at most ``CHUNK``; fewer when the reader ends first."""
    left = length
    while left is None or left > 0:
        chunk = reader.read(CHUNK if left is None else min(left, CHUNK))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


class ObjectStore(ABC):
    """Keys are ``/``-separated paths inside the store's namespace (container or prefix)."""

    namespace: str

    # -- primitives: what each provider implements ------------------------------------------

    @abstractmethod
    def get(self, key: str) -> StoredObject | None:
        """The object and its etag, or ``None`` when the key does not exist."""

    @abstractmethod
    def _put(self, key: str, data: bytes, cond: Condition, content_type: str) -> str:
        """Write ``data`` atomically if ``cond`` holds, return the new etag; otherwise raise
        ``PreconditionFailed`` and change nothing."""

    @abstractmethod
    def open_read(self, key: str) -> Reader:
        """A streamed reader of the object; ``ObjectNotFound`` when it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys that start with ``prefix``, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the key; deleting a missing key is not an error."""

    # -- the flow: the same for every provider ----------------------------------------------

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
        if if_match is not None and if_none_match:
            raise ValueError("put: if_match and if_none_match exclude each other")
        return self._put(key, data, Condition(if_match, if_none_match), content_type)

    def concat(
        self,
        key: str,
        source: ObjectStore,
        parts: Sequence[str],
        *,
        content_type: str = "application/jsonl",
    ) -> None:
        """Write ``key`` as the concatenation of ``source``'s ``parts``, in order, streamed.

        Nothing is visible at ``key`` until every part was read: a missing part raises
        ``ObjectNotFound`` and leaves the previous object (if any) in place.
        """
        self._put_stream(key, source.read_parts(parts), content_type)

    def read_parts(self, keys: Iterable[str]) -> Iterator[bytes]:
        """The bytes of ``keys`` one after another, in chunks of at most ``CHUNK``."""
        for key in keys:
            reader = self.open_read(key)
            try:
                yield from read_chunks(reader)
            finally:
                reader.close()

    # -- defaults a provider may replace with its native call -------------------------------

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and etag of ``key`` without reading it, or ``None`` when it does not exist.

        The default reads the object; providers ask for its properties instead."""
        obj = self.get(key)
        return None if obj is None else ObjectInfo(len(obj.data), obj.etag)

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, end)`` of ``key`` (to its end when ``end`` is ``None``), in
        chunks; ``ObjectNotFound`` (on the first ``next``) when the key does not exist.

        The default reads from the start and drops what comes before ``start``."""
        if end is not None and start >= end:
            return
        reader = self.open_read(key)
        try:
            for _ in read_chunks(reader, start):
                pass
            yield from read_chunks(reader, None if end is None else end - start)
        finally:
            reader.close()

    def _put_stream(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        """Write ``key`` from ``chunks`` atomically; an error from ``chunks`` leaves ``key``
        as it was. The default joins the chunks in memory and puts them once."""
        self.put(key, b"".join(chunks), content_type=content_type)
