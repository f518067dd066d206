"""Best-effort completion callbacks: POST the finished job record to ``callback_url``.

Two retries (three tries) with a short timeout, never past the invocation deadline; a
failure is logged and never changes the job. With ``INFER_CALLBACK_SECRET`` set, the body
is signed like GitHub webhooks: ``X-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``.

With ``allow`` given (the worker always gives it), the URL's host is resolved and checked
again right before sending, and the POST goes to the checked address
(``shared.jobs.callback_guard``). Logs never show the URL's query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from shared.context import Context
from shared.jobs.callback_guard import (
    RESOLVE_TIMEOUT_S,
    CallbackAllow,
    CallbackRefused,
    Resolver,
    Target,
    checked,
    redact,
)

if TYPE_CHECKING:  # imported on the first callback: the Functions app imports this module
    import httpx2

log = logging.getLogger("shared.jobs.callback")

TRIES = 3
PAUSE_S = 0.5


_clients: dict[int, tuple[asyncio.AbstractEventLoop, httpx2.AsyncClient]] = {}


@contextlib.asynccontextmanager
async def _client(
    transport: httpx2.AsyncBaseTransport | None,
) -> AsyncIterator[httpx2.AsyncClient]:
    """One client per process and event loop, built on the first callback and reused (its
    connection pool too); a test's own transport gets a client of its own."""
    import httpx2

    if transport is not None:
        async with httpx2.AsyncClient(transport=transport) as own:
            yield own
        return
    loop = asyncio.get_running_loop()
    found = _clients.get(id(loop))
    if found is None or found[0] is not loop:
        for key in [k for k, (lp, _) in _clients.items() if lp.is_closed()]:
            del _clients[key]
        found = _clients[id(loop)] = (loop, httpx2.AsyncClient())
    yield found[1]


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def send_callback(
    url: str,
    record: dict[str, Any],
    ctx: Context,
    *,
    secret: str | None,
    timeout_s: float,
    transport: httpx2.AsyncBaseTransport | None = None,
    allow: CallbackAllow | None = None,
    resolver: Resolver | None = None,
) -> bool:
    """POST ``record``; True when the receiver answered 2xx."""
    target = Target(url)
    if allow is not None:
        try:
            resolve_s = min(RESOLVE_TIMEOUT_S, max(ctx.remaining(), 0.01))
            target = await checked(url, allow, resolver, resolve_s)
        except CallbackRefused as exc:
            log.warning("callback to %s refused: %s", redact(url), exc)
            return False
    body = json.dumps(record, separators=(",", ":")).encode()
    headers = {"content-type": "application/json", "x-request-id": ctx.request_id}
    if target.host_header:
        headers["host"] = target.host_header
    extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
    if secret:
        headers["x-signature-256"] = signature(secret, body)
    import httpx2

    async with _client(transport) as client:
        for n in range(TRIES):
            left = ctx.remaining()
            if left <= 0.05:
                break
            try:
                r = await client.post(
                    target.url,
                    content=body,
                    headers=headers,
                    timeout=min(timeout_s, left),
                    extensions=extensions,
                )
                if r.is_success:
                    return True
                problem = f"status {r.status_code}"
            except httpx2.HTTPError as exc:  # its text may hold the URL: the type only
                problem = type(exc).__name__
            log.warning("callback to %s failed (try %d/%d): %s", redact(url), n + 1, TRIES, problem)
            if n + 1 < TRIES and ctx.remaining() > PAUSE_S:
                await asyncio.sleep(PAUSE_S * (n + 1))
    return False
