"""Storage connections named by bindings (``connection="AzureWebJobsStorage"``).

Clients are built on first use and cached per connection name. ``UseDevelopmentStorage=true``
means Azurite on 127.0.0.1:10000/10001; an explicit connection string (``BlobEndpoint=…;
QueueEndpoint=…``) points anywhere else.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Mapping

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient, QueueServiceClient

from shared.storage.azure_conn import sdk_transport
from tools.devhost.config import ConfigError

DEFAULT_CONNECTION = "AzureWebJobsStorage"
# Blob downloads stream in chunks of this size, so an InputStream never preloads a blob.
CHUNK_BYTES = 1024 * 1024


def connection_string(name: str | None, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    setting = name or DEFAULT_CONNECTION
    for key in (setting, f"AzureWebJobs{setting}"):
        value = env.get(key)
        if value:
            return value
    if any(k.startswith(f"{setting}__") for k in env):
        raise ConfigError(
            f"connection {setting!r} is identity-based ({setting}__…); devhost needs a "
            f"connection string in {setting} (UseDevelopmentStorage=true for Azurite)"
        )
    raise ConfigError(
        f"connection setting {setting!r} is not set (use UseDevelopmentStorage=true for Azurite)"
    )


def encode_message(body: bytes, encoding: str) -> str:
    """The queue text the host writes for ``body`` under ``messageEncoding``."""
    if encoding == "base64":
        return base64.b64encode(body).decode("ascii")
    return body.decode("utf-8")


def decode_message(text: str, encoding: str) -> bytes:
    """The bytes a queue trigger receives; ValueError when base64 text is not base64."""
    if encoding != "base64":
        return text.encode("utf-8")
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError("message is not valid base64") from exc


class Storage:
    """Service clients per connection name, built lazily and reused."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ
        self._queues: dict[str, QueueServiceClient] = {}
        self._blobs: dict[str, BlobServiceClient] = {}

    def queue_service(self, connection: str | None) -> QueueServiceClient:
        key = connection or DEFAULT_CONNECTION
        if key not in self._queues:
            conn = connection_string(key, self._environ)
            self._queues[key] = QueueServiceClient.from_connection_string(
                conn, transport=sdk_transport()
            )
        return self._queues[key]

    def blob_service(self, connection: str | None) -> BlobServiceClient:
        key = connection or DEFAULT_CONNECTION
        if key not in self._blobs:
            conn = connection_string(key, self._environ)
            self._blobs[key] = BlobServiceClient.from_connection_string(
                conn,
                max_single_get_size=CHUNK_BYTES,
                max_chunk_get_size=CHUNK_BYTES,
                transport=sdk_transport(),
            )
        return self._blobs[key]

    def queue(self, connection: str | None, name: str, *, create: bool = True) -> QueueClient:
        client = self.queue_service(connection).get_queue_client(name)
        if create:
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
        return client

    def container(
        self, connection: str | None, name: str, *, create: bool = True
    ) -> ContainerClient:
        client = self.blob_service(connection).get_container_client(name)
        if create:
            with contextlib.suppress(ResourceExistsError):
                client.create_container()
        return client
