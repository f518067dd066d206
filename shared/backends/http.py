"""HTTP plumbing shared by the HTTP backends: one pooled client per process, one send path
(``send_json``, plain and streamed), bearer tokens as an ``httpx2.Auth`` flow, error mapping,
and ``HttpBackend``, the HTTP transport of ``BaseBackend``.

httpx2 (httpx's maintained successor) is imported here, not by ``shared`` at large; the
client is built on first use and reused by every warm invocation. An ``httpx2.AsyncClient``
belongs to the event loop that first used it, so the pool keeps one per running loop (Azure's
worker and uvicorn have one; a Lambda runtime may give each invocation its own).
"""

from __future__ import annotations

import asyncio
import json
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import httpx2

from shared.backends.base import BaseBackend, ByteStream, ConfigT
from shared.context import Context
from shared.errors import (
    BackendConnectionError,
    BackendError,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    ContextTooLong,
    DeadlineExceeded,
    InferenceError,
    is_context_length,
)
from shared.lifecycle import Keyed
from shared.lines import LineSplitter
from shared.retry import server_delay, should_retry
from shared.schemas import Operation
from shared.telemetry import traceparent

if TYPE_CHECKING:
    import ssl

_transport: httpx2.AsyncBaseTransport | None = None

CONNECT_TIMEOUT_S = 5.0


class _SchemeTransport(httpx2.AsyncBaseTransport):
    """One connection pool per scheme, the TLS one built when an https URL is first used.

    Building a TLS transport loads the system's CA certificates into an SSL context (tens of
    ms of a cold start); a deployment whose endpoints are plain http (a vLLM server inside
    the VNet or VPC) never needs it, and one with https pays it once, on its first call.
    Each pool is httpx2's own (httpcore2's, whose request-to-connection bookkeeping is
    linear in the connections open); no proxy is read from the environment, because the
    client is given its transport.
    """

    def __init__(self, limits: httpx2.Limits) -> None:
        self._limits = limits
        self._pools: dict[str, httpx2.AsyncHTTPTransport] = {}

    def _pool(self, scheme: str) -> httpx2.AsyncHTTPTransport:
        pool = self._pools.get(scheme)
        if pool is None:
            # no TLS on the http pool: skip loading certificates
            verify: ssl.SSLContext | bool = False
            if scheme == "https":
                verify = httpx2.create_ssl_context()
            pool = httpx2.AsyncHTTPTransport(verify=verify, limits=self._limits)
            self._pools[scheme] = pool
        return pool

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self._pool(request.url.scheme).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()


class _NoCookies(httpx2.Cookies):
    """A jar that keeps nothing a response sets, and says so without looking: each request
    asks whether the client's jar is empty, which on the standard library's ``CookieJar``
    takes its lock and walks its nested dicts (a few percent of a busy host's CPU)."""

    def extract_cookies(self, response: httpx2.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx2.Request) -> None:
        return None

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0


class _Client(httpx2.AsyncClient):
    """httpx2's client without a cookie jar.

    One client serves every caller of the process, so a ``Set-Cookie`` on one caller's
    answer must not ride on the next caller's request (an endpoint's load balancer, or
    anything behind it, may set one). httpx2 has no switch for that; the client's public
    ``cookies`` is a jar that ignores what responses set, which also skips the ~0.3 ms of
    CPU per response that reading ``Set-Cookie`` through the standard library's cookie
    machinery costs.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx2.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise AttributeError("the backends' client keeps no cookies")


def new_client(
    max_connections: int = 1000,
    max_keepalive_connections: int = 200,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> httpx2.AsyncClient:
    """A client as the backends use it: no cookies, no redirects, no proxy from the
    environment, one pool per scheme (``_SchemeTransport``) unless given ``transport``."""
    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=max_keepalive_connections
    )
    return _Client(
        transport=transport or _SchemeTransport(limits),
        limits=limits,
        timeout=httpx2.Timeout(60.0, connect=CONNECT_TIMEOUT_S),
        follow_redirects=False,
    )


def _build_client(loop: asyncio.AbstractEventLoop) -> httpx2.AsyncClient:
    # Drop clients of loops that have closed (their connections are unusable).
    _clients.drop(lambda lp: lp.is_closed())
    return new_client(transport=_transport)


#: One client per event loop: a client's connections belong to the loop that opened them.
_clients: Keyed[asyncio.AbstractEventLoop, httpx2.AsyncClient] = Keyed(_build_client)


def set_transport(transport: httpx2.AsyncBaseTransport | None) -> None:
    """Route every backend request through ``transport`` (tests: ``httpx2.MockTransport``)."""
    global _transport
    _transport = transport
    _clients.reset()


def get_client() -> httpx2.AsyncClient:
    """The process's client for the running event loop, built on first use."""
    return _clients.get(asyncio.get_running_loop())


def timeout_for(ctx: Context, backend_timeout_s: float) -> httpx2.Timeout:
    """Per-attempt timeout: the backend's own limit, never past the invocation deadline."""
    left = ctx.check()
    total = min(backend_timeout_s, left)
    return httpx2.Timeout(total, connect=min(CONNECT_TIMEOUT_S, total))


def transport_error(exc: Exception, backend: str) -> InferenceError:
    """Translate an httpx exception into the shared error tree."""
    if isinstance(exc, httpx2.TimeoutException):
        return BackendTimeout(f"backend {backend!r} did not answer in time ({type(exc).__name__})")
    err = BackendConnectionError(f"backend {backend!r} connection failed: {type(exc).__name__}")
    # a request that never reached the endpoint cost it nothing; one cut later may have
    err.no_work = isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout)
    return err


def stream_error(exc: httpx2.TransportError, ctx: Context, backend: str) -> InferenceError:
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
        too_long = is_context_length(code, message)
        err = (ContextTooLong if too_long else BackendRejected)(
            message,
            status=400 if status == 422 or too_long else status,
            code=str(code) if code and not too_long else None,
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
    """An accepted streaming response whose bytes are forwarded as they arrive.

    A stream that translates instead overrides ``chunks``; the transport-error mapping and
    the release of the connection stay here."""

    def __init__(self, response: httpx2.Response, backend: str, ctx: Context) -> None:
        self._response = response
        self._backend = backend
        self._ctx = ctx

    def chunks(self) -> AsyncIterator[bytes]:
        """What the caller gets: the response's bytes as they arrive."""
        return self._response.aiter_bytes()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.chunks():
                yield chunk
        except httpx2.TransportError as exc:
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


class Tokens(Protocol):
    """Where bearer tokens come from (``azure_auth.TokenSource``)."""

    async def token(self) -> str: ...

    async def refresh(self, refused: str) -> str: ...


class BearerTokenAuth(httpx2.Auth):
    """httpx's auth seam for bearer tokens (managed identity: ``azure_auth.TokenSource``).

    Every request carries ``Authorization: Bearer <token>`` from ``tokens``; a 401 answered
    to it drops that token, fetches a fresh one (once for everyone who saw the refusal) and
    sends the request once more. A second 401 is the answer.

    The flow reads neither the request body (backend bodies are bytes, so the retry resends
    them as they are) nor the response body (``requires_response_body`` stays False, and
    ``async_auth_flow`` decides on the status alone), so a streamed request's accepted
    response reaches the caller unread.
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    def sync_auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        raise RuntimeError("BearerTokenAuth fetches tokens asynchronously: use an AsyncClient")

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        token = await self.tokens.token()
        request.headers["authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            token = await self.tokens.refresh(token)
            request.headers["authorization"] = f"Bearer {token}"
            yield request


ErrorMapper = Callable[[int, Mapping[str, str], bytes, str], InferenceError]


async def send_json(
    method: str,
    url: str | httpx2.URL,
    *,
    backend: str,
    ctx: Context,
    timeout_s: float,
    headers: dict[str, str],
    body: bytes | None = None,
    stream: bool = False,
    auth: httpx2.Auth | None = None,
    map_error: ErrorMapper = error_from_response,
) -> httpx2.Response:
    """Send a request; return the response when 2xx, raise ``map_error(status, headers,
    body, backend)`` otherwise (3xx included: redirects are not followed, and are not
    answers). A complete (non-streamed) 2xx whose body is not a JSON object is a
    ``BackendError`` too. ``auth`` is an ``httpx2.Auth`` flow (managed identity:
    ``BearerTokenAuth``, which also retries once on a 401); with ``stream`` the
    accepted response comes back unread."""
    client = get_client()
    if (parent := traceparent(ctx)) is not None:
        headers = {**headers, "traceparent": parent}
    request = client.build_request(
        method, url, content=body, headers=headers, timeout=timeout_for(ctx, timeout_s)
    )
    try:
        response = await client.send(request, stream=stream, auth=auth)
    except httpx2.HTTPError as exc:
        raise transport_error(exc, backend) from exc
    if response.status_code >= 300:
        try:
            content = await response.aread() if stream else response.content
        except httpx2.HTTPError as exc:
            raise transport_error(exc, backend) from exc
        finally:
            if stream:
                await response.aclose()
        raise map_error(response.status_code, response.headers, content, backend)
    if not stream:
        check_json_object(response.content, backend)
    if "x-ratelimit-remaining-tokens" in response.headers or (
        "x-ratelimit-remaining-requests" in response.headers
    ):  # the provider's own quota: what is left (shared/quota.py)
        from shared.quota import note_headers

        note_headers(backend, response.headers)
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


def model_ids(response: httpx2.Response) -> list[str]:
    """The ids of an OpenAI ``GET /models`` answer."""
    data = response.json().get("data", [])
    return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]


class HttpBackend(BaseBackend[ConfigT]):
    """The HTTP transport of ``BaseBackend``: one ``send_json`` for every request.

    Hooks a kind overrides: ``url`` (where an operation goes), ``models_url`` (an OpenAI
    ``GET /models``, if the endpoint has one: it is what ``list_models`` reads and what
    ``check_ready`` asks), ``headers`` (``request_id_header``, ``key_header`` and any of the
    kind's own), ``token_scope`` (the Entra scope for ``auth: managed_identity``),
    ``error`` (status -> shared error), ``stream`` (an accepted streamed response -> OpenAI
    SSE bytes), and ``BaseBackend``'s ``encode``/``decode``.
    """

    #: The header that carries the request id to the endpoint.
    request_id_header: ClassVar[str] = "x-request-id"
    #: The Entra scope of ``auth: managed_identity``; None: the kind has no such auth.
    token_scope: ClassVar[str | None] = None

    def __init__(self, config: ConfigT) -> None:
        super().__init__(config)
        self.tokens: Tokens | None = None
        self.auth: httpx2.Auth | None = None
        if config.auth == "managed_identity" and self.token_scope is not None:
            from shared.backends.azure_auth import token_source

            self.tokens = token_source(config.client_id, self.token_scope)
            self.auth = BearerTokenAuth(self.tokens)

    # -- hooks ------------------------------------------------------------------------------
    @abstractmethod
    def url(self, op: Operation, payload: dict[str, Any]) -> str | httpx2.URL:
        """Where the request for ``op`` goes (every HTTP kind says)."""

    def models_url(self) -> str | httpx2.URL | None:
        return None

    def key_header(self, key: str) -> tuple[str, str]:
        """How ``auth: key`` sends the key (a bearer token, by default)."""
        return "authorization", f"Bearer {key}"

    def headers(self, ctx: Context, *, stream: bool) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            self.request_id_header: ctx.upstream_id,
        }
        if self.config.auth == "key":
            name, value = self.key_header(self.config.api_key())
            headers[name] = value
        return headers

    def error(
        self, status: int, headers: Mapping[str, str], body: bytes, backend: str
    ) -> InferenceError:
        return error_from_response(status, headers, body, backend)

    def stream(
        self, op: Operation, payload: dict[str, Any], response: httpx2.Response, ctx: Context
    ) -> ByteStream:
        return SSEPassThrough(response, self.name, ctx)

    # -- transport --------------------------------------------------------------------------
    async def _send(self, method: str, url: str | httpx2.URL, ctx: Context, *,
                    body: bytes | None = None, stream: bool = False,
                    timeout_s: float | None = None) -> httpx2.Response:  # fmt: skip
        return await send_json(
            method, url, backend=self.name, ctx=ctx,
            timeout_s=timeout_s if timeout_s is not None else self.config.timeout_s,
            headers=self.headers(ctx, stream=stream), body=body, stream=stream,
            auth=self.auth, map_error=self.error,
        )  # fmt: skip

    async def send(
        self, op: Operation, payload: dict[str, Any], body: bytes, ctx: Context
    ) -> bytes:
        response = await self._send("POST", self.url(op, payload), ctx, body=body)
        return response.content

    async def send_stream(
        self, op: Operation, payload: dict[str, Any], body: bytes, ctx: Context
    ) -> ByteStream:
        response = await self._send("POST", self.url(op, payload), ctx, body=body, stream=True)
        return self.stream(op, payload, response, ctx)

    async def _get_models(self, url: str | httpx2.URL, ctx: Context) -> httpx2.Response:
        return await self._send("GET", url, ctx, timeout_s=min(self.config.timeout_s, 10.0))

    async def list_models(self, ctx: Context) -> list[str]:
        url = self.models_url()
        return model_ids(await self._get_models(url, ctx)) if url is not None else []

    async def check_ready(self, ctx: Context) -> None:
        """Ask ``models_url``; an endpoint without one: prove the credential is obtainable."""
        url = self.models_url()
        if url is not None:
            await self._get_models(url, ctx)
        elif self.tokens is not None:
            await self.tokens.token()
        elif self.config.auth == "key":
            self.config.api_key()
