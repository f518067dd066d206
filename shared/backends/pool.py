"""The backends' connection pool: httpcore's, with its per-request bookkeeping made linear.

httpcore 1.0's ``AsyncConnectionPool._assign_requests_to_connections`` runs when a request
starts and again when its response closes. For every idle connection it

- asks whether the server has closed it (``has_expired``), through anyio's typed-attribute
  lookup, which builds a mapping of every socket attribute (family, addresses, ...) to read
  one of them; and
- counts the pool's connections again, calling ``is_idle`` on each: O(n²) in the
  connections open.

A queue worker keeps one connection per job in flight (up to batchSize + newBatchThreshold:
64 with batchSize 32 on two vCPUs), and that bookkeeping was the largest single CPU cost of
a queued job under py-spy (``bench/queue.py``): more than the model call's own HTTP work,
more than storage.

``Pool`` keeps httpcore's policy and does it in one pass: drop closed connections, close
expired ones (keep-alive timed out, or the server hung up while idle) and idle ones beyond
``max_keepalive_connections``; give each queued request the first available connection for
its origin, else a new one while under ``max_connections``, else replace an idle one. The
connection about to be reused is always checked for expiry; the other idle ones once a
second (``Pool.SWEEP_S``), which only decides when their sockets are closed. ``Backend``
wraps anyio's streams so "has the server hung up?" is one ``poll()`` of the socket
remembered at connect. Everything else (HTTP/1.1, TLS, timeouts, errors) is httpcore's.
Measured at 64 connections in flight (a loop of requests to gpusim): 3.4 → 1.3 ms of CPU
per request.

``Transport`` is httpx's transport over ``Pool``, built without proxies (the backends'
client never reads proxy settings from the environment: it is given its transport).
Pinned to ``httpcore>=1.0.5,<1.1`` in requirements.txt, the series whose private method this
overrides; ``tests/contract/test_backend_pool.py`` checks the policy over real sockets.
"""

# httpcore's network interfaces take their timeouts as parameters:
# ruff: noqa: ASYNC109

from __future__ import annotations

import select
import ssl
import time
import typing

import httpcore
import httpx
from httpcore import AsyncConnectionInterface

_POLLIN = getattr(select, "POLLIN", 1)


class _Stream(httpcore.AsyncNetworkStream):
    """anyio's stream, with the server-hung-up check done on the remembered socket."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._sock = stream.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            return _readable(self._sock)
        return self._stream.get_extra_info(info)


def _readable(sock: typing.Any) -> bool:
    """Whether a read would not block: on an idle connection, the server has hung up."""
    if sock is None:
        return False
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, _POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])  # pragma: no cover (Windows)


class Backend(httpcore.AsyncNetworkBackend):
    """anyio's network backend whose streams check for a hang-up cheaply."""

    def __init__(self) -> None:
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(
            await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._backend.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class Pool(httpcore.AsyncConnectionPool):
    """httpcore's pool, its request-to-connection assignment in one pass over the pool.

    Whether the server hung up on an idle connection (a ``poll()``) is asked of the one
    about to be reused, every time; of the other idle ones at most every ``SWEEP_S``, which
    only decides when their sockets are closed, not whether a request may use them.
    """

    SWEEP_S = 1.0
    _next_sweep = 0.0

    def _assign_requests_to_connections(self) -> list[AsyncConnectionInterface]:
        now = time.monotonic()
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + self.SWEEP_S
        closing: list[AsyncConnectionInterface] = []
        kept: list[AsyncConnectionInterface] = []
        idle = 0
        for connection in self._connections:
            if connection.is_closed():
                continue
            if connection.is_idle():  # only an idle connection can expire
                if idle >= self._max_keepalive_connections or (sweep and connection.has_expired()):
                    closing.append(connection)
                    continue
                idle += 1
            kept.append(connection)
        self._connections = kept

        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            chosen = self._reusable(origin, closing, checked=sweep)
            if chosen is None:
                if len(kept) >= self._max_connections:
                    spare = next((c for c in kept if c.is_idle()), None)
                    if spare is None:
                        continue  # at the limit: the request waits for a connection
                    kept.remove(spare)
                    closing.append(spare)
                chosen = self.create_connection(origin)
                kept.append(chosen)
            pool_request.assign_to_connection(chosen)
        return closing

    def _reusable(
        self, origin: httpcore.Origin, closing: list[AsyncConnectionInterface], *, checked: bool
    ) -> AsyncConnectionInterface | None:
        """The first available connection for ``origin`` the server has not hung up on
        (one found hung up is closed); ``checked``: this pass has just asked them all."""
        kept = self._connections
        i = 0
        while i < len(kept):
            connection = kept[i]
            if connection.can_handle_request(origin) and connection.is_available():
                if checked or not connection.has_expired():
                    return connection
                del kept[i]
                closing.append(connection)
                continue
            i += 1
        return None


class Transport(httpx.AsyncHTTPTransport):
    """httpx's transport over ``Pool`` (HTTP/1.1, no proxy; TLS only with a context)."""

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext | None) -> None:
        # httpx's own __init__ only builds its pool (and loads certificates): build ours.
        self._pool = Pool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=Backend(),
        )
