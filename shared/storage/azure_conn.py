"""The ``AzureWebJobsStorage`` connection, as the Functions host reads it.

Either a connection string in ``AzureWebJobsStorage`` (``UseDevelopmentStorage=true`` for
Azurite), or identity-based settings: ``AzureWebJobsStorage__blobServiceUri`` /
``__queueServiceUri`` (or ``__accountName``, from which both are derived),
``__credential=managedidentity`` and ``__clientId`` for a user-assigned identity.
The credential is built once per process and shared by the blob and queue clients.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shared.errors import ConfigError
from shared.lifecycle import Keyed

PREFIX = "AzureWebJobsStorage"

Service = Literal["blob", "queue"]


@dataclass(frozen=True)
class AzureConnection:
    connection_string: str | None = None
    account_url: str | None = None
    credential_kind: str | None = None
    client_id: str | None = None


def connection_from_env(
    env: Mapping[str, str] | None = None, *, service: Service
) -> AzureConnection:
    env = os.environ if env is None else env
    conn = env.get(PREFIX)
    if conn:
        return AzureConnection(connection_string=conn)
    uri = env.get(f"{PREFIX}__{service}ServiceUri")
    account = env.get(f"{PREFIX}__accountName")
    if not uri and account:
        uri = f"https://{account}.{service}.core.windows.net"
    if not uri:
        raise ConfigError(
            f"no storage connection: set {PREFIX} (connection string) or "
            f"{PREFIX}__{service}ServiceUri / {PREFIX}__accountName (identity-based)",
            param=PREFIX,
        )
    return AzureConnection(
        account_url=uri,
        credential_kind=(env.get(f"{PREFIX}__credential") or "").lower() or None,
        client_id=env.get(f"{PREFIX}__clientId") or None,
    )


def has_azure_storage(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(
        env.get(k)
        for k in (
            PREFIX,
            f"{PREFIX}__blobServiceUri",
            f"{PREFIX}__queueServiceUri",
            f"{PREFIX}__accountName",
        )
    )


def _build_credential(key: tuple[str | None, str | None]) -> Any:
    kind, client_id = key
    if kind == "managedidentity":
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=client_id)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=client_id)


_credentials: Keyed[tuple[str | None, str | None], Any] = Keyed(_build_credential)


def credential(conn: AzureConnection) -> Any:
    """The process's token credential for an identity-based connection (built once)."""
    return _credentials.get((conn.credential_kind, conn.client_id))
