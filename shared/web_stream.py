"""The HTTP side of :mod:`shared.streaming` (kept apart: the queue and batch paths import
the service, and have no use for Starlette)."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from shared.streaming import ForwardStream


class ClosingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that closes its ``ForwardStream`` when it ends, however it ends
    (finished, failed, client gone, task cancelled)."""

    def __init__(
        self,
        content: ForwardStream,
        *,
        media_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers, background=background)
        self._stream = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
