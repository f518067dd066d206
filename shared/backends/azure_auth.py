"""Entra tokens for the Azure backends, from the process's managed identity.

One credential per ``client_id`` per process (built on first use, reused by warm
invocations) and one :class:`TokenSource` per (client_id, scope), which keeps the token
until 5 minutes before it expires, so the identity endpoint is asked at most once per token
lifetime however many requests run. azure-identity is imported here, lazily: a function
whose backends use keys or AWS never loads it.

Which credential:
- ``IDENTITY_ENDPOINT`` set (App Service, Azure Functions, Container Apps):
  ``ManagedIdentityCredential(client_id=…)`` directly: no chain to walk, no probing.
- otherwise ``DefaultAzureCredential(managed_identity_client_id=…)``: VM/AKS managed
  identity, workload identity, or a developer's ``az login`` when running against real
  Azure from a laptop.

The sync credential runs in a worker thread (``asyncio.to_thread``): the aio credential
needs aiohttp, which the functions do not ship. A lock makes concurrent callers share one
fetch. When an endpoint refuses a token (401: revoked, expired early, wrong audience) the
backend calls :meth:`TokenSource.refresh` with the refused token; the credential is rebuilt
(its own cache would hand back the same token) and a fresh token is fetched once, however
many requests saw the refusal.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from shared.backends.http import (
    check_json_object,
    error_from_response,
    get_client,
    timeout_for,
    transport_error,
)
from shared.context import Context
from shared.errors import BackendError, InferenceError
from shared.lifecycle import Keyed

#: A token with less than this left counts as expired (azure-identity and MSAL use 5 min).
REFRESH_MARGIN_S = 300.0
COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
AZURE_ML_SCOPE = "https://ml.azure.com/.default"

CredentialFactory = Callable[[str | None], Any]


def default_credential(client_id: str | None) -> Any:
    """The credential for this process's identity (see the module docstring)."""
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


ErrorMapper = Callable[[int, Mapping[str, str], bytes, str], InferenceError]


async def send_authorized(
    method: str,
    url: str,
    *,
    backend: str,
    ctx: Context,
    timeout_s: float,
    headers: dict[str, str],
    tokens: TokenSource | None,
    body: bytes | None = None,
    stream: bool = False,
    map_error: ErrorMapper = error_from_response,
) -> httpx.Response:
    """Send a request (with a bearer token from ``tokens`` when given); return a 2xx
    response, raise ``map_error(status, headers, body, backend)`` otherwise.

    A 401 answered to a cached token drops it, fetches a fresh one and retries once: a token
    refused as expired or for the wrong audience leads to a refresh, not a failure.
    """
    client = get_client()
    token = await tokens.token() if tokens is not None else None
    for attempt in (0, 1):
        sent = headers if token is None else {**headers, "authorization": f"Bearer {token}"}
        request = client.build_request(
            method, url, content=body, headers=sent, timeout=timeout_for(ctx, timeout_s)
        )
        try:
            response = await client.send(request, stream=stream)
        except httpx.HTTPError as exc:
            raise transport_error(exc, backend) from exc
        if response.status_code == 401 and attempt == 0 and tokens is not None and token:
            await response.aclose()
            token = await tokens.refresh(token)
            continue
        if response.status_code < 300:
            if not stream:
                check_json_object(response.content, backend)
            return response
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:
            raise transport_error(exc, backend) from exc
        finally:
            await response.aclose()
        raise map_error(response.status_code, response.headers, content, backend)
    raise AssertionError("unreachable")  # pragma: no cover
