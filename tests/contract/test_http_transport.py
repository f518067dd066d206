"""The backends' HTTP client over real loopback sockets: plain http and TLS use their own pools."""

from __future__ import annotations

import asyncio
import ssl

import httpx2
import pytest

from shared.backends import http as backend_http


async def test_http_and_https_are_routed_to_their_own_pools() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # a request, or a TLS ClientHello
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend_http.set_transport(None)
    try:
        client = backend_http.get_client()
        plain = await client.get(f"http://127.0.0.1:{port}/")
        assert plain.status_code == 200 and plain.text == "ok"
        # The same plain server spoken to over https must fail the TLS handshake: the
        # https pool really does TLS (with certificate verification), it is not the http one.
        with pytest.raises(httpx2.ConnectError) as info:
            await client.get(f"https://127.0.0.1:{port}/")
        assert isinstance(info.value.__context__, ssl.SSLError) or "SSL" in str(info.value)
    finally:
        await backend_http.get_client().aclose()
        backend_http.set_transport(None)
        server.close()
        await server.wait_closed()


async def test_a_cookie_one_answer_sets_is_not_sent_with_the_next_request() -> None:
    """One client serves every caller: what a response sets must not reach the next one."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            seen.append(head)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nset-cookie: session=caller-a; Path=/\r\n"
                b"\r\nok"
            )
            await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend_http.set_transport(None)
    try:
        client = backend_http.get_client()
        for _ in range(2):
            assert (await client.get(f"http://127.0.0.1:{port}/v1/models")).status_code == 200
        assert len(seen) == 2
        assert all(b"cookie" not in head.lower() for head in seen), seen
        assert not client.cookies
        with pytest.raises(AttributeError):  # nor can a jar be given to it later
            client.cookies = {"session": "caller-b"}
    finally:
        await backend_http.get_client().aclose()
        backend_http.set_transport(None)
        server.close()
        await server.wait_closed()
