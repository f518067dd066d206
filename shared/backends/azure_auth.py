"""Entra tokens for the Azure backends, from the process's managed identity.

One credential per ``client_id`` per process (built on first use, reused by warm
invocations) and one :class:`TokenSource` per (client_id, scope), which keeps the token
until 5 minutes before it expires, so the identity endpoint is asked at most once per token
lifetime however many requests run. azure-identity is imported here, lazily: a function
whose backends use keys or AWS never loads it.

Which identity: the entry's ``client_id``, else the user-assigned identity named by
``AZURE_CLIENT_ID`` (the variable azure-identity and Azure's templates use; infra/ sets it),
else the system-assigned one.

Which credential:
- ``IDENTITY_ENDPOINT`` set (App Service, Azure Functions, Container Apps):
  ``ManagedIdentityCredential(client_id=…)`` directly: no chain to walk, no probing.
- otherwise ``DefaultAzureCredential(managed_identity_client_id=…)``: VM/AKS managed
  identity, workload identity, or a developer's ``az login`` when running against real
  Azure from a laptop.

The sync credential runs in a worker thread (``asyncio.to_thread``): the aio credential
needs aiohttp, which the functions do not ship. A lock makes concurrent callers share one
fetch. Requests get their token from ``shared.backends.http.BearerTokenAuth``, an
``httpx.Auth`` flow: when an endpoint refuses a token (401: revoked, expired early, wrong
audience) the flow calls :meth:`TokenSource.refresh` with the refused token; the credential
is rebuilt (its own cache would hand back the same token), a fresh token is fetched once,
however many requests saw the refusal, and the request is sent once more. This module does
not import httpx: the Redis sign-in (``shared.state``) uses the same token sources.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from shared.errors import BackendError
from shared.lifecycle import Keyed

#: A token with less than this left counts as expired (azure-identity and MSAL use 5 min).
REFRESH_MARGIN_S = 300.0
COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
AZURE_ML_SCOPE = "https://ml.azure.com/.default"

CredentialFactory = Callable[[str | None], Any]


def default_credential(client_id: str | None) -> Any:
    """The credential for this process's identity (see the module docstring)."""
    client_id = client_id or os.environ.get("AZURE_CLIENT_ID") or None
    if os.environ.get("IDENTITY_ENDPOINT"):
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=client_id)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=client_id)


class TokenSource:
    """Bearer tokens for one scope from one identity, cached until close to expiry."""

    def __init__(
        self,
        client_id: str | None,
        scope: str,
        *,
        factory: CredentialFactory = default_credential,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self.scope = scope
        self._factory = factory
        self._clock = clock
        self._lock = threading.Lock()
        self._credential: Any = None
        self._token: str | None = None
        self._expires_on = 0.0
        self.fetches = 0

    def _fresh(self) -> str | None:
        if self._token and self._expires_on - self._clock() > REFRESH_MARGIN_S:
            return self._token
        return None

    def _fetch_locked(self) -> str:
        if self._credential is None:
            self._credential = self._factory(self.client_id)
        try:
            access = self._credential.get_token(self.scope)
        except Exception as exc:  # azure-identity raises several unrelated classes
            raise BackendError(
                f"could not obtain a managed identity token for {self.scope} "
                f"(client_id {self.client_id or 'system-assigned'}): {type(exc).__name__}: "
                f"{str(exc)[:300]}"
            ) from exc
        self.fetches += 1
        self._token = str(access.token)
        self._expires_on = float(access.expires_on)
        return self._token

    def _get_sync(self, refused: str | None) -> str:
        with self._lock:
            if refused is not None and self._token == refused:
                self._token = None  # the endpoint refused it: never hand it out again
                self._credential = None  # its cache would return the same token
            token = self._fresh()
            return token if token is not None else self._fetch_locked()

    async def token(self) -> str:
        """A valid token; the identity endpoint is asked only when none is cached."""
        cached = self._fresh()
        if cached is not None:
            return cached
        return await asyncio.to_thread(self._get_sync, None)

    async def refresh(self, refused: str) -> str:
        """A new token after the endpoint refused ``refused`` (fetched once for everyone)."""
        return await asyncio.to_thread(self._get_sync, refused)


_sources: Keyed[tuple[str | None, str], TokenSource] = Keyed(lambda key: TokenSource(*key))


def token_source(client_id: str | None, scope: str) -> TokenSource:
    """The process's token source for (identity, scope), built on first use."""
    return _sources.get((client_id, scope))
