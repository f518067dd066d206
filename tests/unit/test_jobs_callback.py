"""Completion callbacks: signed, retried twice, bounded by the deadline."""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx2

from shared.context import Context
from shared.jobs.callback import send_callback, signature


async def test_callback_is_signed_and_retried_until_accepted() -> None:
    seen: list[httpx2.Request] = []

    def receiver(req: httpx2.Request) -> httpx2.Response:
        seen.append(req)
        return httpx2.Response(500 if len(seen) < 3 else 204)

    record = {"id": "job-1", "status": "succeeded"}
    ok = await send_callback(
        "http://hooks.test/done",
        record,
        Context.with_timeout(10, request_id="job-1"),
        secret="s3cret",
        timeout_s=1,
        transport=httpx2.MockTransport(receiver),
    )
    assert ok and len(seen) == 3
    body = seen[0].content
    assert json.loads(body) == record
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert seen[0].headers["x-signature-256"] == expected == signature("s3cret", body)
    assert seen[0].headers["x-request-id"] == "job-1"


async def test_callback_gives_up_after_three_tries_and_is_unsigned_without_secret() -> None:
    seen: list[httpx2.Request] = []

    def receiver(req: httpx2.Request) -> httpx2.Response:
        seen.append(req)
        raise httpx2.ConnectError("refused", request=req)

    ok = await send_callback(
        "http://hooks.test/done",
        {"id": "j"},
        Context.with_timeout(10),
        secret=None,
        timeout_s=1,
        transport=httpx2.MockTransport(receiver),
    )
    assert not ok and len(seen) == 3 and "x-signature-256" not in seen[0].headers
