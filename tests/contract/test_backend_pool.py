"""The backends' connection pool (httpx2's, as ``shared.backends.http`` builds its client)
over real loopback sockets.

The policy the backends rely on (reuse, keep-alive limit, connection limit, drop connections
the server closed) with bookkeeping linear in the connections open; each test fails if that
part of the policy breaks, whichever client library provides it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpcore2
import httpx2
import pytest

from shared.backends.http import new_client

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


@dataclass
class Server:
    """An HTTP/1.1 server that keeps connections alive unless told to hang up."""

    hang_up_after_response: bool = False
    close_after_response: bool = False  # says "connection: close", then closes
    delay_s: float = 0.0
    accepted: int = 0
    open_now: int = 0
    most_open: int = 0
    port: int = 0
    _server: asyncio.Server | None = field(default=None, repr=False)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")  # a GET: no body
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(CLOSE if self.close_after_response else OK)
                await writer.drain()
                if (
                    self.hang_up_after_response or self.close_after_response
                ):  # no "connection: close": a silent hang-up
                    return
        finally:
            self.open_now -= 1
            writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server() as s:
        yield s


def client(max_connections: int = 100, max_keepalive: int = 20) -> httpx2.AsyncClient:
    return new_client(max_connections, max_keepalive)


async def test_sequential_requests_reuse_one_connection(server: Server) -> None:
    async with client() as c:
        for _ in range(5):
            assert (await c.get(server.url)).text == "ok"
    assert server.accepted == 1


async def test_a_connection_the_server_closed_while_idle_is_not_reused(server: Server) -> None:
    server.hang_up_after_response = True
    async with client() as c:
        for _ in range(3):
            assert (await c.get(server.url)).text == "ok"
            await asyncio.sleep(0.05)  # the hang-up reaches our socket
    assert server.accepted == 3  # each request found the last connection readable: closed


async def test_idle_connections_beyond_the_keepalive_limit_are_closed(server: Server) -> None:
    server.delay_s = 0.05
    async with client(max_keepalive=2) as c:
        await asyncio.gather(*(c.get(server.url) for _ in range(5)))
        assert server.accepted == 5
        await asyncio.sleep(0.05)  # the closes reach the server
        assert server.open_now == 2


async def test_at_the_connection_limit_requests_wait_then_all_succeed(server: Server) -> None:
    server.delay_s = 0.05
    async with client(max_connections=2, max_keepalive=2) as c:
        answers = await asyncio.gather(*(c.get(server.url) for _ in range(6)))
    assert [a.text for a in answers] == ["ok"] * 6
    assert server.most_open == 2 and server.accepted == 2


async def test_at_the_limit_connections_closed_after_their_answer_make_room(
    server: Server,
) -> None:
    # At the limit, connections the server closed must not hold the places.
    server.close_after_response = True
    async with client(max_connections=2, max_keepalive=2) as c:
        for _ in range(3):
            answers = await asyncio.wait_for(
                asyncio.gather(c.get(server.url), c.get(server.url)), 5
            )
            assert [a.text for a in answers] == ["ok", "ok"]
    assert server.accepted == 6 and server.most_open <= 2


async def test_bookkeeping_is_linear_in_the_connections_open(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.delay_s = 0.05
    n = 32
    async with client(max_keepalive=n) as c:
        await asyncio.gather(*(c.get(server.url) for _ in range(n)))  # n idle connections
        calls = 0
        is_idle = httpcore2.AsyncHTTPConnection.is_idle

        def counted(self: httpcore2.AsyncHTTPConnection) -> bool:
            nonlocal calls
            calls += 1
            return is_idle(self)

        monkeypatch.setattr(httpcore2.AsyncHTTPConnection, "is_idle", counted)
        await c.get(server.url)
    # one request: an assignment when it starts and one when its response closes, each a
    # few passes over the pool (~4n: 129 at n=32); httpcore 1.0 counted the pool again per
    # idle connection, n² (over 1,000 here)
    assert calls <= 6 * n, calls
