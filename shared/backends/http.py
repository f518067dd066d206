"""HTTP plumbing shared by the HTTP backends: one pooled client per process, error mapping.

httpx is imported here, not by ``shared`` at large; the client is built on first use and
reused by every warm invocation. An ``httpx.AsyncClient`` belongs to the event loop that
first used it, so the pool keeps one per running loop (Azure's worker and uvicorn have one;
a Lambda runtime may give each invocation its own).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from shared.backends.base import ByteStream
from shared.context import Context
from shared.errors import (
    BackendConnectionError,
    BackendError,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    DeadlineExceeded,
    InferenceError,
)
from shared.lifecycle import Keyed
from shared.lines import LineSplitter
from shared.retry import server_delay, should_retry
from shared.telemetry import traceparent

# httpx's __init__ tries to import its command-line tool (click, pygments, rich) and keeps
# whatever it got before failing. uvicorn brings click into both deployment artifacts, so
# that attempt costs ~40 ms of every cold start for a CLI no function uses. A None entry
# makes that one optional import fail at once; nothing else changes.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402

_transport: httpx.AsyncBaseTransport | None = None

CONNECT_TIMEOUT_S = 5.0


class _SchemeTransport(httpx.AsyncBaseTransport):
    """One connection pool per scheme, the TLS one built when an https URL is first used.

    Building a TLS transport loads the CA bundle into an SSL context (~35 ms of a cold
    start); a deployment whose endpoints are plain http (a vLLM server inside the VNet or
    VPC) never needs it, and one with https pays it once, on its first call, as before.
    """

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        self._pools: dict[str, httpx.AsyncHTTPTransport] = {}

    def _pool(self, scheme: str) -> httpx.AsyncHTTPTransport:
        pool = self._pools.get(scheme)
        if pool is None:
            if scheme == "https":
                pool = httpx.AsyncHTTPTransport(limits=self._limits)
            else:  # no TLS on this pool: skip loading certificates
                pool = httpx.AsyncHTTPTransport(limits=self._limits, verify=False)
            self._pools[scheme] = pool
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._pool(request.url.scheme).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()


def _build_client(loop: asyncio.AbstractEventLoop) -> httpx.AsyncClient:
    # Drop clients of loops that have closed (their connections are unusable).
    _clients.drop(lambda lp: lp.is_closed())
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    return httpx.AsyncClient(
        transport=_transport or _SchemeTransport(limits),
        limits=limits,
        timeout=httpx.Timeout(60.0, connect=CONNECT_TIMEOUT_S),
        follow_redirects=False,
    )


#: One client per event loop: a client's connections belong to the loop that opened them.
_clients: Keyed[asyncio.AbstractEventLoop, httpx.AsyncClient] = Keyed(_build_client)


def set_transport(transport: httpx.AsyncBaseTransport | None) -> None:
    """Route every backend request through ``transport`` (tests: ``httpx.MockTransport``)."""
    global _transport
    _transport = transport
    _clients.reset()


def get_client() -> httpx.AsyncClient:
    """The process's client for the running event loop, built on first use."""
    return _clients.get(asyncio.get_running_loop())


def timeout_for(ctx: Context, backend_timeout_s: float) -> httpx.Timeout:
    """Per-attempt timeout: the backend's own limit, never past the invocation deadline."""
    left = ctx.check()
    total = min(backend_timeout_s, left)
    return httpx.Timeout(total, connect=min(CONNECT_TIMEOUT_S, total))


def transport_error(exc: Exception, backend: str) -> InferenceError:
    """Translate an httpx exception into the shared error tree."""
    if isinstance(exc, httpx.TimeoutException):
        return BackendTimeout(f"backend {backend!r} did not answer in time ({type(exc).__name__})")
    return BackendConnectionError(f"backend {backend!r} connection failed: {type(exc).__name__}")


def stream_error(exc: httpx.TransportError, ctx: Context, backend: str) -> InferenceError:
    """What a transport failure after the stream opened means: the deadline, or the endpoint."""
    if ctx.remaining() <= 0:
        return DeadlineExceeded("the invocation deadline passed mid-stream")
    return transport_error(exc, backend)


def _error_fields(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    err = data.get("error")
    if isinstance(err, dict):
        return err
    if isinstance(err, str):  # TGI: {"error": "...", "error_type": "..."}
        return {"message": err, "type": data.get("error_type")}
    if isinstance(data.get("message"), str):  # Azure ML / SageMaker shapes
        return {"message": data["message"]}
    return {}


def error_from_response(
    status: int, headers: Mapping[str, str], body: bytes, backend: str
) -> InferenceError:
    """Map an endpoint's error answer to the shared tree, keeping its OpenAI error fields.

    4xx answers the caller caused (400, 404, 413, 422: bad prompt, content filter) pass
    through with their status and body fields; 401/403 mean *our* outbound credential was
    refused, which is a server-side problem (502). 408/409/429/5xx are retryable.
    """
    fields = _error_fields(body)
    message = str(fields.get("message") or f"backend {backend!r} answered HTTP {status}")
    retry_after = server_delay(headers)
    retryable = should_retry(status, headers)
    code = fields.get("code")
    extra = {k: v for k, v in fields.items() if k not in ("message", "type", "param", "code")}
    err: InferenceError
    if status < 400:  # a redirect (or another non-2xx): not an answer at all
        err = BackendError(
            f"backend {backend!r} answered HTTP {status} instead of a result; an endpoint "
            "must answer directly (check its base_url)",
        )
        retryable = False
    elif status == 429:
        err = BackendRateLimited(message, retry_after=retry_after, code=code or None)
    elif status == 503:
        err = BackendUnavailable(message, retry_after=retry_after)
    elif status in (408, 504):
        err = BackendTimeout(message, retry_after=retry_after)
    elif status in (401, 403):
        err = BackendError(
            f"backend {backend!r} refused our credentials (HTTP {status}); check its auth "
            "settings and role assignments",
        )
        retryable = False
    elif status >= 500 or status == 409:
        err = BackendError(message, retry_after=retry_after, code=code or None)
    else:
        err = BackendRejected(
            message,
            status=400 if status == 422 else status,
            code=str(code) if code else None,
            param=fields.get("param") if isinstance(fields.get("param"), str) else None,
            extra=extra,
        )
        etype = fields.get("type")
        if isinstance(etype, str) and etype:
            err.type = etype
        retryable = False
    err.retryable = retryable
    return err


class SSEPassThrough:
    """An accepted streaming response whose bytes are forwarded as they arrive."""

    def __init__(self, response: httpx.Response, backend: str, ctx: Context) -> None:
        self._response = response
        self._backend = backend
        self._ctx = ctx

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except httpx.TransportError as exc:
            raise stream_error(exc, self._ctx, self._backend) from exc
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


class LineBlockStream:
    """A pass-through re-cut at line ends, each block of whole lines passed through ``edit``.

    Endpoint chunks split SSE lines anywhere; a backend that rewrites or drops events
    (renaming the model, skipping Azure's prompt-filter chunk) needs whole lines. Blocks
    that ``edit`` empties are not sent.
    """

    def __init__(self, inner: ByteStream, edit: Callable[[bytes], bytes]) -> None:
        self._inner = inner
        self._edit = edit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        lines = LineSplitter()
        async for chunk in self._inner:
            whole = lines.block(chunk)
            if whole and (block := self._edit(whole)):
                yield block
        if (rest := lines.rest(keep_ends=True)) and (block := self._edit(rest)):
            yield block

    async def aclose(self) -> None:
        await self._inner.aclose()


async def send_json(
    method: str,
    url: str | httpx.URL,
    *,
    backend: str,
    ctx: Context,
    timeout_s: float,
    headers: dict[str, str],
    body: bytes | None = None,
    stream: bool = False,
) -> httpx.Response:
    """Send a request; return the response when 2xx, raise a mapped error otherwise (3xx
    included: redirects are not followed, and are not answers). A complete (non-streamed)
    2xx whose body is not a JSON object is a ``BackendError`` too."""
    client = get_client()
    if (parent := traceparent(ctx)) is not None:
        headers = {**headers, "traceparent": parent}
    request = client.build_request(
        method, url, content=body, headers=headers, timeout=timeout_for(ctx, timeout_s)
    )
    try:
        response = await client.send(request, stream=stream)
    except httpx.HTTPError as exc:
        raise transport_error(exc, backend) from exc
    if response.status_code >= 300:
        try:
            content = await response.aread() if stream else response.content
        except httpx.HTTPError as exc:
            raise transport_error(exc, backend) from exc
        finally:
            if stream:
                await response.aclose()
        raise error_from_response(response.status_code, response.headers, content, backend)
    if not stream:
        check_json_object(response.content, backend)
    return response


def check_json_object(content: bytes, backend: str) -> None:
    """Raise ``BackendError`` unless ``content`` looks like one JSON object (or array:
    TGI answers a list).

    A cheap shape check (first and last non-blank bytes are brackets), not a parse: the
    pass-through path never parses answers it only forwards. It catches what proxies and
    misrouted endpoints send with a 200: HTML pages, plain text, empty or cut-off bodies.
    """
    body = content.strip()
    if not body or (body[:1], body[-1:]) not in ((b"{", b"}"), (b"[", b"]")):
        raise BackendError(
            f"backend {backend!r} answered 2xx with a body that is not a JSON object "
            f"({len(content)} bytes)"
        )
