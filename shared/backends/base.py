"""The Backend protocol, the one seam between the service and a model endpoint, and
``BaseBackend``, the flow every kind shares.

A backend speaks one endpoint kind (the kinds are listed in ``shared.backends.registry``)
and always answers in OpenAI shapes: JSON bodies for ``invoke`` and OpenAI
SSE bytes (``data: {chunk}\\n\\n`` ... ``data: [DONE]\\n\\n``) for ``open_stream``. It raises
only errors from ``shared.errors`` (provider errors translated at the edge, chained).

``open_stream`` returns once the endpoint has accepted the request (status known), so the
service can retry or fail over before the first byte reaches the caller; failures after that
surface as exceptions from the iterator.

``BaseBackend`` owns that flow: ``invoke`` is encode -> send -> decode, ``open_stream`` is
encode -> send_stream; a kind overrides only the hooks that differ (payload translation,
transport, response translation, listing, readiness). ``shared.backends.http.HttpBackend``
is the transport for the HTTP kinds (URL, headers, auth and error mapping as hooks).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from shared.context import Context
from shared.schemas import Operation
from shared.settings import BackendConfig

#: The event that ends an OpenAI stream: every stream this project emits ends with it.
SSE_DONE = b"data: [DONE]\n\n"


@dataclass
class Result:
    """A complete (non-streamed) answer: the body bytes as they go to the caller."""

    content: bytes
    backend: str = ""
    _data: dict[str, Any] | None = field(default=None, repr=False)

    def json(self) -> dict[str, Any]:
        if self._data is None:
            data = json.loads(self.content)
            self._data = data if isinstance(data, dict) else {"data": data}
        return self._data

    @classmethod
    def from_data(cls, data: dict[str, Any], *, backend: str = "") -> Result:
        content = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(content=content, backend=backend, _data=data)

    def usage(self) -> dict[str, Any] | None:
        usage = self.json().get("usage")
        return usage if isinstance(usage, dict) else None


class ByteStream(Protocol):
    """An open OpenAI SSE stream. Iterate for bytes; ``aclose`` releases the connection."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    name: str
    config: BackendConfig

    async def invoke(self, op: Operation, payload: dict[str, Any], ctx: Context) -> Result:
        """Send one request; return the OpenAI-shaped JSON answer."""
        ...

    async def open_stream(self, op: Operation, payload: dict[str, Any], ctx: Context) -> ByteStream:
        """Start a streamed request; return once the endpoint accepted it."""
        ...

    async def list_models(self, ctx: Context) -> list[str]:
        """Model ids the endpoint reports (empty when the endpoint cannot list them)."""
        ...

    async def check_ready(self, ctx: Context) -> None:
        """Raise a ``BackendError`` when the endpoint is not reachable or not ready."""
        ...

    async def aclose(self) -> None: ...


ConfigT = TypeVar("ConfigT", bound=BackendConfig)


class BaseBackend(ABC, Generic[ConfigT]):
    """The flow of one backend kind, in terms of hooks the kind overrides.

    A kind sets ``config_class`` (its ``BackendConfig`` subclass, which settings validates
    its entries with) and implements ``send`` and ``send_stream`` (or inherits them from
    ``HttpBackend``); ``encode`` and ``decode`` translate payloads when the endpoint does not
    speak OpenAI; ``list_models``, ``check_ready`` and ``aclose`` default to "nothing to
    list", "ready" and "nothing to release".
    """

    config_class: ClassVar[type[BackendConfig]]

    def __init__(self, config: ConfigT) -> None:
        self.name = config.name
        self.config = config

    # -- hooks ------------------------------------------------------------------------------
    def encode(self, op: Operation, payload: dict[str, Any], *, stream: bool) -> bytes:
        """The request body the endpoint gets for an OpenAI ``payload`` (as is, by default)."""
        return json.dumps(payload).encode()

    @abstractmethod
    async def send(
        self, op: Operation, payload: dict[str, Any], body: bytes, ctx: Context
    ) -> bytes:
        """Send ``body``; return the endpoint's complete answer (raise a shared error)."""

    @abstractmethod
    async def send_stream(
        self, op: Operation, payload: dict[str, Any], body: bytes, ctx: Context
    ) -> ByteStream:
        """Send ``body`` asking for a stream; return once accepted, as OpenAI SSE bytes."""

    def decode(self, op: Operation, payload: dict[str, Any], content: bytes) -> Result:
        """The OpenAI answer for the endpoint's ``content`` (passed through, by default)."""
        return Result(content=content, backend=self.name)

    # -- the flow ---------------------------------------------------------------------------
    async def invoke(self, op: Operation, payload: dict[str, Any], ctx: Context) -> Result:
        content = await self.send(op, payload, self.encode(op, payload, stream=False), ctx)
        return self.decode(op, payload, content)

    async def open_stream(self, op: Operation, payload: dict[str, Any], ctx: Context) -> ByteStream:
        return await self.send_stream(op, payload, self.encode(op, payload, stream=True), ctx)

    async def list_models(self, ctx: Context) -> list[str]:
        """What this backend adds to ``GET /v1/models`` when it serves ``"*"``."""
        return []

    async def check_ready(self, ctx: Context) -> None:
        return None

    async def aclose(self) -> None:
        return None
