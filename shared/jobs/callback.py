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
import hashlib
import hmac
import json
import logging
from typing import Any

import httpx

from shared.blocking import run_blocking
from shared.context import Context
from shared.jobs.callback_guard import (
    CallbackAllow,
    CallbackRefused,
    Resolver,
    Target,
    check,
    redact,
)

log = logging.getLogger("shared.jobs.callback")

TRIES = 3
PAUSE_S = 0.5


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def send_callback(
    url: str,
    record: dict[str, Any],
    ctx: Context,
    *,
    secret: str | None,
    timeout_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
    allow: CallbackAllow | None = None,
    resolver: Resolver | None = None,
) -> bool:
    """POST ``record``; True when the receiver answered 2xx."""
    target = Target(url)
    if allow is not None:
        try:
            target = await run_blocking(check, url, allow, resolver)
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
    async with httpx.AsyncClient(transport=transport) as client:
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
            except httpx.HTTPError as exc:  # its text may hold the URL: the type only
                problem = type(exc).__name__
            log.warning("callback to %s failed (try %d/%d): %s", redact(url), n + 1, TRIES, problem)
            if n + 1 < TRIES and ctx.remaining() > PAUSE_S:
                await asyncio.sleep(PAUSE_S * (n + 1))
    return False
