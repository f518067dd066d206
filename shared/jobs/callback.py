"""Best-effort completion callbacks: POST the finished job record to ``callback_url``.

Two retries (three tries) with a short timeout, never past the invocation deadline; a
failure is logged and never changes the job. With ``INFER_CALLBACK_SECRET`` set, the body
is signed like GitHub webhooks: ``X-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

import httpx

from shared.context import Context

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
) -> bool:
    """POST ``record``; True when the receiver answered 2xx."""
    body = json.dumps(record, separators=(",", ":")).encode()
    headers = {"content-type": "application/json", "x-request-id": ctx.request_id}
    if secret:
        headers["x-signature-256"] = signature(secret, body)
    async with httpx.AsyncClient(transport=transport) as client:
        for n in range(TRIES):
            left = ctx.remaining()
            if left <= 0.05:
                break
            try:
                r = await client.post(
                    url, content=body, headers=headers, timeout=min(timeout_s, left)
                )
                if r.is_success:
                    return True
                problem = f"status {r.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            log.warning("callback to %s failed (try %d/%d): %s", url, n + 1, TRIES, problem)
            if n + 1 < TRIES and ctx.remaining() > PAUSE_S:
                await asyncio.sleep(PAUSE_S * (n + 1))
    return False
