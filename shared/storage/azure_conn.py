"""The ``AzureWebJobsStorage`` connection, as the Functions host reads it.

Either a connection string in ``AzureWebJobsStorage`` (``UseDevelopmentStorage=true`` for
Azurite), or identity-based settings: ``AzureWebJobsStorage__blobServiceUri`` /
``__queueServiceUri`` (or ``__accountName``, from which both are derived),
``__credential=managedidentity`` and ``__clientId`` for a user-assigned identity.
The credential is built once per process and shared by the blob and queue clients.

``sdk_transport()`` is the HTTP transport each Storage client sends through (see there).
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


#: Environment settings requests would look up on every request when it trusts the
#: environment (compared without case, as urllib does for the proxy settings).
PROXY_SETTINGS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
CA_BUNDLE_SETTINGS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
#: The Storage SDKs' own transport defaults (connect, read seconds; read block size).
SDK_CONNECTION_TIMEOUT_S = 20
SDK_READ_TIMEOUT_S = 60
SDK_DATA_BLOCK_SIZE = 256 * 1024


def _needs_env_lookups(env: Mapping[str, str]) -> bool:
    """A proxy setting or a netrc file: what only a per-request lookup handles as requests
    does (no_proxy matching, netrc host matching)."""
    if any(value and name.lower() in PROXY_SETTINGS for name, value in env.items()):
        return True
    if env.get("NETRC"):
        return True
    home = os.path.expanduser("~")
    return any(os.path.exists(os.path.join(home, f)) for f in (".netrc", "_netrc"))


def sdk_transport(env: Mapping[str, str] | None = None) -> Any:
    """The requests transport for one Storage client, with the SDK's own timeouts.

    requests, when it trusts the environment, looks up proxies, a CA bundle and a netrc
    file on every request (two passes over the whole environment and a file lookup):
    about a quarter of the CPU of a storage call in a Functions app, whose environment
    holds every app setting. The environment does not change under a running worker, so
    it is read once here instead: with no proxy setting and no netrc file the transport
    stops looking, and a CA bundle (``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``) is
    passed as the verify path, as requests would. With a proxy setting or a netrc file,
    the default (look on every request) is kept. Behaviour is the same either way.
    """
    from azure.core.pipeline.transport import RequestsTransport

    env = os.environ if env is None else env
    per_request = _needs_env_lookups(env)
    bundle = next((env[k] for k in CA_BUNDLE_SETTINGS if env.get(k)), None)
    return RequestsTransport(
        use_env_settings=per_request,
        connection_verify=True if per_request or bundle is None else bundle,
        connection_timeout=SDK_CONNECTION_TIMEOUT_S,
        read_timeout=SDK_READ_TIMEOUT_S,
        connection_data_block_size=SDK_DATA_BLOCK_SIZE,
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
