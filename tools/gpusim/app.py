"""Assemble a simulator: one Runtime, the admin routes, and every protocol module's routes.

A protocol module is any module with ``routes(rt: Runtime) -> list[BaseRoute]``; add it to
``PROTOCOLS``. The returned ASGI app counts every request by route and status, and gives
handlers the TCP transport so faults can reset or cut connections (see ``wire``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import admin, azure_openai, azureml, openai_api, sagemaker, tgi, wire
from .config import Config
from .runtime import Runtime

_CONVERTOR = re.compile(r"\{(\w+):\w+\}")  # "/v1/models/{model:path}" -> "{model}"
RouteFactory = Callable[[Runtime], list[BaseRoute]]
PROTOCOLS: tuple[RouteFactory, ...] = (
    openai_api.routes,
    azure_openai.routes,
    azureml.routes,
    sagemaker.routes,
    tgi.routes,
)


class Outer:
    """The outermost ASGI layer (directly under the server)."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # uvicorn's send is a method of the request cycle, which holds the transport.
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is not None:
            scope[wire.TRANSPORT_KEY] = transport
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = _CONVERTOR.sub(r"{\1}", getattr(scope.get("route"), "path", "unmatched"))
            if not route.startswith("/admin/"):
                outcome = scope.get(wire.OUTCOME_KEY) or (str(status) if status else "none")
                self.runtime.metrics.record_request(route, outcome)


def _error(status: int, message: str, type_: str) -> Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": None}}
    return JSONResponse(body, status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}",
                  "invalid_request_error")  # fmt: skip


async def _server_error(request: Request, exc: Exception) -> Response:
    return _error(500, f"gpusim internal error: {exc!r}", "server_error")


def build_app(
    config: Config | None = None,
    *,
    runtime: Runtime | None = None,
    protocols: Sequence[RouteFactory] = PROTOCOLS,
) -> Outer:
    """An ASGI app for ``config`` (defaults if None); ``app.runtime`` is its state."""
    rt = runtime or Runtime(config or Config())
    routes: list[BaseRoute] = admin.routes(rt)
    for factory in protocols:
        routes += factory(rt)
    handlers: dict[Any, Any] = {HTTPException: _http_error, Exception: _server_error}
    inner = Starlette(routes=routes, exception_handlers=handlers)
    inner.state.runtime = rt
    return Outer(inner, rt)
