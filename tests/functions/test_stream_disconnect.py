"""Callers that hang up on a stream early never keep a concurrency slot or a connection.

The chat function's app runs in uvicorn (a real server, so a real disconnect) in front of a
gpusim backend with ``max_concurrency: 2``. 200 callers send a streamed request and hang up:
half at once (while the stream is being opened), half right after the response headers,
before the first chunk (gpusim waits ``ttft`` before it). A slot leaked by any of them would
hold the backend full; afterwards the router has nothing in flight, the upstream pool holds
no busy connection, and a normal request is served at once.

Two server flavours: uvicorn as it is (ASGI spec 2.3: Starlette cancels the response when
``receive`` reports the disconnect) and uvicorn speaking spec 2.4, where ``send`` raises
``OSError`` once the client is gone, so the response body is never iterated at all (servers
that implement 2.4 do this; it is the case that leaked: the generator's cleanup never ran).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import httpx2
import pytest
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.backends import http as backend_http
from shared.service import get_service
from tests.fixtures.devhost import wait_for
from tests.fixtures.gpusim import Gpusim
from tests.fixtures.procs import free_port

MAX_CONCURRENCY = 2
BODY = json.dumps(
    {
        "model": "local-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "stream": True,
    }
).encode()


def spec_2_4(app: ASGIApp) -> ASGIApp:
    """The app behind a server that speaks ASGI spec 2.4 (``send`` raises once disconnected)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.4"}}
            cycle = getattr(send, "__self__", None)  # uvicorn's request cycle

            async def checked_send(message: Message) -> None:
                if getattr(cycle, "disconnected", False):
                    raise OSError("client disconnected")
                await send(message)

            await app(scope, receive, checked_send)
            return
        await app(scope, receive, send)

    return wrapped


@pytest.fixture(params=["spec-2.3", "spec-2.4"])
def chat_server(
    request: pytest.FixtureRequest,
    clean_env: pytest.MonkeyPatch,
    gpusim_factory: Callable[..., Gpusim],
) -> Iterator[tuple[str, Gpusim]]:
    sim = gpusim_factory(ttft_base_ms=200)
    backends = [
        {"name": "sim", "kind": "openai", "base_url": sim.v1, "models": ["*"],
         "max_concurrency": MAX_CONCURRENCY}
    ]  # fmt: skip
    clean_env.setenv("INFER_BACKENDS", json.dumps(backends))
    clean_env.setenv("INFER_REQUEST_TIMEOUT_S", "10")  # a leak fails fast, not in 120 s
    from functions.chat.app import app

    asgi: ASGIApp = spec_2_4(app) if request.param == "spec-2.4" else app
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30)
    yield f"http://127.0.0.1:{port}", sim
    server.should_exit = True
    thread.join(timeout=30)


def hang_up(port: int, *, after_headers: bool) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: fn\r\ncontent-type: application/json\r\n"
            + b"content-length: %d\r\n\r\n" % len(BODY)
            + BODY
        )
        if after_headers:
            seen = b""
            while b"\r\n\r\n" not in seen:
                data = sock.recv(4096)
                if not data:
                    break
                seen += data
            assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
            assert b"data:" not in seen.split(b"\r\n\r\n", 1)[1], "first chunk came too soon"


def busy_upstream_connections() -> int:
    """Connections of the backend pool that are not idle (a request still holds them)."""
    busy = 0
    for client in backend_http._clients.values():
        transport = client._transport
        pools = getattr(transport, "_pools", {}).values()
        for pool in pools:
            for conn in pool._pool.connections:
                if not (conn.is_idle() or conn.is_closed()):
                    busy += 1
            busy += len(pool._pool._requests)
    return busy


def test_200_early_hang_ups_leak_no_slot_and_no_connection(
    chat_server: tuple[str, Gpusim],
) -> None:
    url, sim = chat_server
    port = int(url.rsplit(":", 1)[1])
    for i in range(200):
        hang_up(port, after_headers=bool(i % 2))

    slot = get_service().router.slots[0]
    wait_for(lambda: slot.in_flight == 0, timeout=20)
    wait_for(lambda: busy_upstream_connections() == 0, timeout=20)
    wait_for(lambda: sim.stats()["running"] == 0, timeout=20)  # gpusim saw each one go

    with httpx2.Client(base_url=url, timeout=30) as client:
        r = client.post(
            "/v1/chat/completions", content=BODY.replace(b'"stream": true', b'"stream": false')
        )
        assert r.status_code == 200, r.text
        with client.stream("POST", "/v1/chat/completions", content=BODY) as s:
            assert s.status_code == 200
            text = b"".join(s.iter_bytes())
        assert text.rstrip().endswith(b"data: [DONE]")
    assert slot.in_flight == 0
    assert busy_upstream_connections() == 0
