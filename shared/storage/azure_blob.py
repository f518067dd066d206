"""Azure Blob Storage object store: one container per namespace (created on first use).

Conditions map to blob ETags: ``if_none_match`` is ``overwrite=False`` (``If-None-Match: *``),
``if_match`` is ``etag=`` + ``MatchConditions.IfNotModified``; a refusal (412, 409) becomes
``PreconditionFailed``. Reads stream in 4 MiB ranges. ``stat`` reads the blob's properties,
``stream`` is one ranged download, and ``concat`` stages each chunk as a block and commits
the block list once, so the blob appears whole. Every call goes through the store's own
``BlobServiceClient`` (the one injected, or the process's).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from shared.lifecycle import Keyed
from shared.storage.azure_conn import (
    AzureConnection,
    connection_from_env,
    credential,
    sdk_transport,
)
from shared.storage.base import (
    Condition,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    Reader,
    StorageError,
    StoredObject,
)

CHUNK = 4 * 1024 * 1024
#: BlobClients kept per store: a job's claim and its result write the same blob, so the
#: second write reuses the client the first built (building one costs as much CPU as the
#: request it sends). Enough for every job a worker process has in flight.
BLOB_CLIENTS = 256


def _build_service(conn: AzureConnection) -> Any:
    from azure.storage.blob import BlobServiceClient

    from shared.storage.deadline import azure_retry_policy

    opts: dict[str, Any] = {
        "max_single_get_size": CHUNK,
        "max_chunk_get_size": CHUNK,
        "retry_policy": azure_retry_policy(),
        "transport": sdk_transport(),
    }
    if conn.connection_string:
        return BlobServiceClient.from_connection_string(conn.connection_string, **opts)
    return BlobServiceClient(conn.account_url or "", credential=credential(conn), **opts)


_services: Keyed[AzureConnection, Any] = Keyed(_build_service)


def blob_service(conn: AzureConnection | None = None) -> Any:
    """The process's ``BlobServiceClient`` for the connection (built once, reused)."""
    return _services.get(conn or connection_from_env(service="blob"))


class _DownloadReader:
    def __init__(self, downloader: Any) -> None:
        self._downloader = downloader

    def read(self, size: int = -1, /) -> bytes:
        data: bytes = self._downloader.read(size if size is not None and size >= 0 else -1)
        return data

    def close(self) -> None:
        return None


class AzureBlobStore(ObjectStore):
    def __init__(self, namespace: str, service: Any | None = None) -> None:
        self.namespace = namespace
        self._service = service or blob_service()
        self._container = self._service.get_container_client(namespace)
        self._ready = False
        self._blobs: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._blobs_lock = threading.Lock()

    def _blob(self, key: str) -> Any:
        """The ``BlobClient`` of ``key``: one of the most recently used, else a new one."""
        with self._blobs_lock:
            client = self._blobs.get(key)
            if client is not None:
                self._blobs.move_to_end(key)
                return client
        client = self._container.get_blob_client(key)
        with self._blobs_lock:
            self._blobs[key] = client
            while len(self._blobs) > BLOB_CLIENTS:
                self._blobs.popitem(last=False)
        return client

    def _ensure_container(self) -> None:
        if self._ready:
            return
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()
        self._ready = True

    def get(self, key: str) -> StoredObject | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = self._blob(key).download_blob()
            data = downloader.readall()
        except ResourceNotFoundError:
            return None
        return StoredObject(data=data, etag=str(downloader.properties.etag))

    def _put(self, key: str, data: bytes, cond: Condition, content_type: str) -> str:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.storage.blob import ContentSettings

        self._ensure_container()
        kwargs: dict[str, Any] = {
            "overwrite": not cond.if_none_match,
            "content_settings": ContentSettings(content_type=content_type),
        }
        if cond.if_match is not None:
            kwargs["etag"] = cond.if_match
            kwargs["match_condition"] = MatchConditions.IfNotModified
        try:
            props = self._blob(key).upload_blob(data, **kwargs)
        except ResourceNotFoundError as exc:
            if cond.if_match is not None:
                raise PreconditionFailed(f"{self.namespace}/{key} does not exist") from exc
            raise StorageError(f"writing {self.namespace}/{key} failed: {exc}") from exc
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                raise PreconditionFailed(f"{self.namespace}/{key}: condition not met") from exc
            raise StorageError(f"writing {self.namespace}/{key} failed: {exc}") from exc
        return str(props["etag"])

    def open_read(self, key: str) -> Reader:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return _DownloadReader(self._blob(key).download_blob())
        except ResourceNotFoundError:
            raise ObjectNotFound(f"{self.namespace}/{key} does not exist") from None

    def list(self, prefix: str = "") -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return sorted(
                b.name for b in self._container.list_blobs(name_starts_with=prefix or None)
            )
        except ResourceNotFoundError:
            return []

    def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self._container.delete_blob(key)

    def stat(self, key: str) -> ObjectInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self._container.get_blob_client(key).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return ObjectInfo(int(props.size), str(props.etag))

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """One ranged download (``offset``/``length``), its body in ``CHUNK`` pieces."""
        from azure.core.exceptions import ResourceNotFoundError

        if end is not None and start >= end:
            return
        length = None if end is None else end - start
        try:
            downloader = self._container.download_blob(key, offset=start, length=length)
            yield from downloader.chunks()
        except ResourceNotFoundError:
            raise ObjectNotFound(f"{self.namespace}/{key} does not exist") from None

    def _put_stream(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        """Each chunk is staged as a block; committing the block list makes the blob appear
        at once. Blocks never committed are discarded by the service."""
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob import BlobBlock, ContentSettings

        self._ensure_container()
        blob = self._container.get_blob_client(key)
        blocks: list[BlobBlock] = []
        prefix = uuid.uuid4().hex[:16]
        try:
            for chunk in chunks:
                block_id = f"{prefix}-{len(blocks):08d}"
                blob.stage_block(block_id, chunk)
                blocks.append(BlobBlock(block_id=block_id))
            settings = ContentSettings(content_type=content_type)
            blob.commit_block_list(blocks, content_settings=settings)
        except HttpResponseError as exc:
            raise StorageError(f"writing {self.namespace}/{key} failed: {exc}") from exc
