"""The managed-identity ``httpx2.Auth`` flow: bearer token on every request, one refresh and
one resend on a 401, and a streamed answer handed back unread (the flow never needs it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2

from shared.backends.http import BearerTokenAuth


class Tokens:
    """Numbered tokens; ``refresh`` of the refused one hands out the next."""

    def __init__(self) -> None:
        self.current = "t1"
        self.refreshed: list[str] = []

    async def token(self) -> str:
        return self.current

    async def refresh(self, refused: str) -> str:
        self.refreshed.append(refused)
        if self.current == refused:
            self.current = f"t{int(refused[1:]) + 1}"
        return self.current


async def test_a_401_refreshes_once_and_a_stream_comes_back_unread() -> None:
    seen: list[str | None] = []
    started: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        started.append(True)
        yield b"data: {}\n\n"

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers.get("authorization"))
        if len(seen) == 1:
            return httpx2.Response(401, json={"error": {"message": "expired"}})
        return httpx2.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    tokens = Tokens()
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client:
        request = client.build_request("POST", "http://e/chat", content=b"{}")
        response = await client.send(request, stream=True, auth=BearerTokenAuth(tokens))
        assert response.status_code == 200 and not started  # not read by the flow
        assert [c async for c in response.aiter_bytes()] == [b"data: {}\n\n"]
        await response.aclose()
    assert seen == ["Bearer t1", "Bearer t2"] and tokens.refreshed == ["t1"]


async def test_a_second_401_is_the_answer() -> None:
    seen: list[str | None] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers.get("authorization"))
        return httpx2.Response(401)

    tokens = Tokens()
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client:
        response = await client.post("http://e/chat", content=b"{}", auth=BearerTokenAuth(tokens))
    assert response.status_code == 401
    assert seen == ["Bearer t1", "Bearer t2"] and tokens.refreshed == ["t1"]
