"""ASGI plumbing shared by every protocol module: raw responses, aborting a TCP connection,
waiting for a client to give up, retry headers. Nothing here knows a wire format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

TRANSPORT_KEY = "gpusim.transport"
OUTCOME_KEY = "gpusim.outcome"

Handler = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def retry_headers(seconds: float | None) -> dict[str, str]:
    """``retry-after`` in whole seconds (RFC 9110) plus the exact ``retry-after-ms``; none
    for ``None`` (an endpoint that throttles without saying when to come back)."""
    if seconds is None:
        return {}
    return {
        "retry-after": str(max(0, math.ceil(seconds))),
        "retry-after-ms": str(max(0, round(seconds * 1000))),
    }


def json_start(status: int, body: bytes, headers: dict[str, str] | None = None) -> Message:
    raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http.response.start", "status": status, "headers": raw}


async def send_json(
    send: Send, status: int, obj: Any, headers: dict[str, str] | None = None
) -> None:
    body = dumps(obj)
    await send(json_start(status, body, headers))
    await send({"type": "http.response.body", "body": body})


class RawResponse(Response):
    """A Response whose body is produced by an ASGI ``handler(scope, receive, send)``.

    The handler runs together with a watch on ``receive``: when the client disconnects
    first, the handler is cancelled, so a client that gives up frees its queue place or
    running slot at once (as vLLM aborts the request), and the request is counted with
    status "disconnected".
    """

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        finished = await run_until_disconnect(receive, self.handler(scope, receive, send))
        if not finished and OUTCOME_KEY not in scope:
            set_outcome(scope, "disconnected")


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_until_disconnect(receive: Receive, work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work`` until it ends or the client disconnects; True when it ran to the end."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return not task.cancelled()


def set_outcome(scope: Scope, outcome: str) -> None:
    """Name how a request ended when no status tells it (reset, timeout, midstream)."""
    scope[OUTCOME_KEY] = outcome


class ConnectionAborted(Exception):
    """Raised where no TCP transport exists (an in-process ASGI client) to abort instead."""


def abort_connection(scope: Scope, *, reset: bool = True) -> None:
    """Drop the client's TCP connection now.

    ``reset=True`` sends RST and discards unsent bytes (a crashed peer); ``reset=False``
    closes after the bytes already sent (FIN), so a client reads them and then finds the
    response cut short (an unfinished chunked body: a stream that died midway).

    The transport is put in the scope by :class:`tools.gpusim.app.Outer` (uvicorn's send
    callable is bound to the request cycle that owns it).
    """
    transport: Any = scope.get(TRANSPORT_KEY)
    if transport is None:
        raise ConnectionAborted("gpusim aborted the connection")
    if not reset:
        transport.close()
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


#: Bodies up to this size are decoded on the event loop; larger ones in a thread, so one
#: big request never stalls the others.
INLINE_JSON_BYTES = 64 * 1024


async def loads(raw: bytes) -> Any:
    """``json.loads`` that never blocks the loop on a big body; raises ``ValueError`` for
    anything that is not JSON (a body nested past Python's recursion limit included)."""
    try:
        if len(raw) <= INLINE_JSON_BYTES:
            return json.loads(raw)
        return await asyncio.to_thread(json.loads, raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


async def dumps_off_loop(obj: Any) -> bytes:
    """:func:`dumps` in a thread (an embeddings answer of 2,048 vectors is ~20 MB of JSON)."""
    return await asyncio.to_thread(dumps, obj)
