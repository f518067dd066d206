"""HTTP triggers as one ASGI app: routing, methods, request/response conversion, streaming."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from tools.devhost.invoke import Invoker, annotation_of
from tools.devhost.keys import HostKeys, auth_level_of
from tools.devhost.registry import FunctionSpec
from tools.devhost.routes import RouteTemplate
from tools.devhost.view import PREFIX as VIEW_PREFIX
from tools.devhost.view import view_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("devhost")


@dataclass(frozen=True)
class HttpRoute:
    spec: FunctionSpec
    template: RouteTemplate
    path: str  # as displayed: /api/v1/jobs/{id}
    methods: frozenset[str] | None  # None: every method
    native: bool  # True: the function takes func.HttpRequest, not a Starlette Request

    @classmethod
    def build(cls, spec: FunctionSpec, route_prefix: str) -> HttpRoute:
        route = spec.trigger.get("route") or spec.name
        methods = spec.trigger.get("methods")
        ann = annotation_of(spec.func, spec.trigger["name"])
        native = not (isinstance(ann, type) and issubclass(ann, Request))
        return cls(
            spec,
            RouteTemplate.compile(route_prefix, route),
            "/" + "/".join(p for p in (route_prefix.strip("/"), route.strip("/")) if p),
            frozenset(str(m).upper() for m in methods) if methods else None,
            native,
        )

    def allows(self, method: str) -> bool:
        return self.methods is None or method.upper() in self.methods

    def display_methods(self) -> str:
        return (
            ",".join(sorted(self.methods))
            if self.methods
            else "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS"
        )


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _url(scope: Scope) -> str:
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "localhost")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}{scope['path']}" + (f"?{query}" if query else "")


async def to_http_request(
    scope: Scope, receive: Receive, params: dict[str, str]
) -> func.HttpRequest:
    headers: dict[str, str] = {}
    for k, v in scope["headers"]:
        key = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    query = dict(
        parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    )
    return func.HttpRequest(
        method=scope["method"],
        url=_url(scope),
        headers=headers,
        params=query,
        route_params=params,
        body=await _read_body(receive),
    )


def to_asgi_response(result: Any) -> Response:
    """What the Python worker makes of a function's return value."""
    if isinstance(result, Response):
        return result
    if isinstance(result, func.HttpResponse):
        headers = {k: v for k, v in result.headers.items() if k.lower() != "content-length"}
        if "content-type" not in {k.lower() for k in headers} and result.mimetype:
            charset = f"; charset={result.charset}" if result.charset else ""
            headers["Content-Type"] = f"{result.mimetype}{charset}"
        return Response(result.get_body(), status_code=result.status_code, headers=headers)
    if result is None:
        return Response(status_code=204)
    if isinstance(result, bytes | bytearray):
        return Response(bytes(result), media_type="application/octet-stream")
    if isinstance(result, str):
        return PlainTextResponse(result)
    return JSONResponse(result)


def metrics_response() -> Response:
    """``GET /metrics``: the functions' telemetry as Prometheus text (404 when it is off)."""
    from shared.telemetry import prometheus_text

    found = prometheus_text()
    if found is None:
        return PlainTextResponse(
            "telemetry is off: set INFER_METRICS_PROMETHEUS=1 to serve /metrics", status_code=404
        )
    body, content_type = found
    return Response(body, headers={"content-type": content_type})


class HttpApp:
    """The ASGI app uvicorn serves: ``/{routePrefix}/{route}`` for every HTTP trigger."""

    def __init__(
        self,
        specs: list[FunctionSpec],
        route_prefix: str,
        invoker: Invoker,
        keys: HostKeys | None = None,
    ) -> None:
        self.routes = sorted(
            (HttpRoute.build(s, route_prefix) for s in specs), key=lambda r: r.template.sort_key
        )
        self.invoker = invoker
        self.keys = keys or HostKeys.from_settings(os.environ)

    @property
    def needs_keys(self) -> bool:
        return any(auth_level_of(r.spec.trigger) != "anonymous" for r in self.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"].upper()
        matched = [(r, p) for r in self.routes if (p := r.template.match(path)) is not None]
        if not matched:
            if path == "/metrics" and method == "GET":
                await metrics_response()(scope, receive, send)
            elif path.startswith(VIEW_PREFIX) and method == "GET":
                await view_response(path)(scope, receive, send)
            elif path in ("", "/"):
                await PlainTextResponse("devhost: Functions app is up and running")(
                    scope, receive, send
                )
            else:
                await Response(status_code=404)(scope, receive, send)
            return
        for route, params in matched:
            if route.allows(method):
                given = HostKeys.presented(scope["headers"], scope.get("query_string", b""))
                if not self.keys.allows(auth_level_of(route.spec.trigger), given):
                    await Response(status_code=401)(scope, receive, send)  # as the host: no body
                    return
                await self._invoke(route, params, scope, receive, send)
                return
        allow = sorted({m for r, _ in matched for m in (r.methods or ())})
        await Response(status_code=405, headers={"Allow": ", ".join(allow)})(scope, receive, send)

    async def _invoke(
        self, route: HttpRoute, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = False
        status = 0

        async def tracking_send(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, int(message["status"])
            await send(message)

        scope = {**scope, "path_params": params}
        t0 = time.perf_counter()
        outcome = "success"
        try:
            if route.native:
                arg: Any = await to_http_request(scope, receive, params)
            else:
                arg = Request(scope, receive)
            result = await self.invoker.invoke(route.spec, arg)
            await to_asgi_response(result)(scope, receive, tracking_send)
        except Exception:
            outcome = "failed"
            log.exception("function %s raised", route.spec.name)
            if not started:
                await PlainTextResponse("Internal Server Error", status_code=500)(
                    scope, receive, tracking_send
                )
        log.info(
            "invocation function=%s trigger=http method=%s status=%s duration_ms=%.1f outcome=%s",
            route.spec.name,
            scope["method"],
            status,
            (time.perf_counter() - t0) * 1000,
            outcome,
        )
