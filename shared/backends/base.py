"""The Backend protocol: the one seam between the service and a model endpoint.

A backend speaks one endpoint kind (``openai``, ``azure_openai``, ``azureml``,
``sagemaker``) and always answers in OpenAI shapes: JSON bodies for ``invoke`` and OpenAI
SSE bytes (``data: {chunk}\\n\\n`` ... ``data: [DONE]\\n\\n``) for ``open_stream``. It raises
only errors from ``shared.errors`` (provider errors translated at the edge, chained).

``open_stream`` returns once the endpoint has accepted the request (status known), so the
service can retry or fail over before the first byte reaches the caller; failures after that
surface as exceptions from the iterator.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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
    headers: dict[str, str] = field(default_factory=dict)
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
