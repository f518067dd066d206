"""A streamed answer whose cleanup runs whatever happens to the caller.

``Service.stream`` returns a :class:`ForwardStream`: the open endpoint stream (holding the
router's concurrency slot and a pooled upstream connection) plus the generator that
forwards its bytes. An async generator's ``finally`` runs only once it has started, and a
caller that disconnects before the first chunk (or while the response is being started)
never starts it; ``aclose`` therefore closes the endpoint stream itself, and
``shared.web_stream.ClosingStreamingResponse`` always calls it, shielded from the
cancellation that a disconnect delivers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from shared.backends.base import ByteStream


class ForwardStream:
    """Iterate for the caller's bytes; ``aclose`` releases the endpoint stream, iterated or not."""

    def __init__(self, body: AsyncGenerator[bytes, None], opened: ByteStream | None) -> None:
        self._body = body
        self._opened: ByteStream | None = opened

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._body

    async def aclose(self) -> None:
        opened, self._opened = self._opened, None
        try:
            await self._body.aclose()
        finally:
            if opened is not None:
                await opened.aclose()
