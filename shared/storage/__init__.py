"""Storage seams shared by the jobs API, the queue worker and blob-triggered batch.

- ``get_store(namespace)`` -> ``ObjectStore`` (``base.py``): a container (Azure), a key
  prefix in ``INFER_BUCKET`` (S3) or a sub-directory (local).
- ``get_queue(name)`` -> ``QueueSender`` (``queues.py``): send a JSON message, with a
  claim-check for bodies too large for the queue.

The provider is chosen from the environment, in this order:
``INFER_STORE`` (``s3`` | ``azure`` | ``local``) if set; ``s3`` when ``INFER_BUCKET`` is set;
``azure`` when ``AzureWebJobsStorage`` (or its identity-based ``__*`` settings) is set;
otherwise ``local``, rooted at ``INFER_LOCAL_STORE`` (default ``.local/store``).
Stores and clients are built on first use and reused by warm invocations.
"""

from __future__ import annotations

import os

from shared.errors import ConfigError
from shared.lifecycle import Keyed
from shared.storage.base import (
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    Reader,
    StorageError,
    StoredObject,
)

__all__ = [
    "ObjectNotFound",
    "ObjectStore",
    "PreconditionFailed",
    "Reader",
    "StorageError",
    "StoredObject",
    "get_store",
    "provider",
]

DEFAULT_LOCAL_ROOT = ".local/store"


def provider() -> str:
    """``s3``, ``azure`` or ``local``: where this process keeps objects and sends messages."""
    from shared.storage.azure_conn import has_azure_storage

    forced = os.environ.get("INFER_STORE", "").strip().lower()
    if forced:
        if forced not in ("s3", "azure", "local"):
            raise ConfigError(
                f"INFER_STORE: expected s3, azure or local, got {forced!r}", param="INFER_STORE"
            )
        return forced
    if os.environ.get("INFER_BUCKET"):
        return "s3"
    if has_azure_storage():
        return "azure"
    return "local"


def _build(namespace: str) -> ObjectStore:
    kind = provider()
    if kind == "s3":
        from shared.storage.s3 import S3Store

        bucket = os.environ.get("INFER_BUCKET")
        if not bucket:
            raise ConfigError("INFER_BUCKET: the S3 bucket is not set", param="INFER_BUCKET")
        return S3Store(bucket, namespace)
    if kind == "azure":
        from shared.storage.azure_blob import AzureBlobStore

        return AzureBlobStore(namespace)
    from shared.storage.local import LocalStore

    return LocalStore(os.environ.get("INFER_LOCAL_STORE") or DEFAULT_LOCAL_ROOT, namespace)


_stores = Keyed(_build)


def get_store(namespace: str) -> ObjectStore:
    """The store for ``namespace`` (an Azure container name: lowercase, digits, dashes)."""
    return _stores.get(namespace)
