"""Azure OpenAI protocol: deployments paths and v1 paths over the OpenAI engine routes.

- ``POST /openai/deployments/{deployment}/chat/completions|completions|embeddings
  ?api-version=…`` (the deployment is the model) and ``POST /openai/v1/...`` (``model`` in
  the body names the deployment); ``GET /openai/models?api-version=…``, ``/openai/v1/models``.
- Auth: ``api-key: <key>`` (one of ``--azure-api-keys``) or ``Authorization: Bearer
  <token>`` verified with ``--identity-signing-key`` for audience
  ``https://cognitiveservices.azure.com`` and expiry; otherwise 401 in Azure's shape.
- A prompt containing ``--content-filter-word`` (or a request with header
  ``x-gpusim-content-filter: true``) is refused with Azure's 400 ``content_filter`` body.
- Streams start with Azure's ``prompt_filter_results`` chunk (``choices: []``).
:class:`Relay` (run an inner response, rewriting what it sends) is reused by azureml.py and
sagemaker.py.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from tools.identity import tokens

from . import openai_api, wire
from .runtime import Runtime

AUDIENCE = "https://cognitiveservices.azure.com"
CONTENT_FILTER_HEADER = "x-gpusim-content-filter"
_SAFE = openai_api.SAFE
_CATEGORIES = openai_api.CATEGORIES
PROMPT_FILTER_CHUNK = (
    b"data: "
    + json.dumps({
        "choices": [], "created": 0, "id": "", "model": "", "object": "",
        "prompt_filter_results": [
            {"prompt_index": 0, "content_filter_results": dict.fromkeys(_CATEGORIES, _SAFE)}
        ],
    }).encode()
    + b"\n\n"
)  # fmt: skip

Endpoint = Callable[[Request], Awaitable[Response]]
SendFilter = Callable[[Message, Send], Awaitable[None]]


class Relay(Response):
    """Run ``inner`` and pass every message it sends through ``filter(message, send)``."""

    def __init__(self, inner: Response, make_filter: Callable[[], SendFilter]) -> None:
        super().__init__()
        self.inner = inner
        self.make_filter = make_filter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        filt = self.make_filter()

        async def filtered(message: Message) -> None:
            await filt(message, send)

        await self.inner(scope, receive, filtered)


def bearer(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def authorize(rt: Runtime, headers: Mapping[str, str], audience: str,
              *, key_header: str | None) -> str | None:  # fmt: skip
    """None when the request carries an accepted key or a valid token, else why not."""
    keys = rt.config.azure_api_keys
    candidates = [headers.get(key_header)] if key_header else []
    token = bearer(headers)
    candidates.append(token)
    for given in candidates:
        if given and any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            return None
    if not token:
        return "missing credentials"
    try:
        tokens.verify(token, rt.config.identity_signing_key, audience)
    except tokens.TokenError as exc:
        return exc.reason
    return None


def unauthorized() -> Response:
    message = (
        "Unauthorized. Access token is missing, invalid, audience is incorrect "
        f"({AUDIENCE}), or have expired."
    )
    return JSONResponse({"error": {"code": "401", "message": message}}, status_code=401)


def with_body(request: Request, body: bytes) -> Request:
    """The same request with another body (the original receive still reports disconnects)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return Request(request.scope, receive)


def content_filter_error() -> Response:
    return JSONResponse(openai_api.content_filter_body(), status_code=400)


def prefix_stream(prefix: bytes) -> Callable[[], SendFilter]:
    """A filter putting ``prefix`` before the first body bytes of a 200 event stream."""

    def make() -> SendFilter:
        state = {"sse": False, "done": False}

        async def filt(message: Message, send: Send) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                state["sse"] = message["status"] == 200 and headers.get(
                    b"content-type", b""
                ).startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and state["sse"] and not state["done"]:
                state["done"] = True
                message = {**message, "body": prefix + message.get("body", b"")}
            await send(message)

        return filt

    return make


def routes(rt: Runtime) -> list[BaseRoute]:
    inner: dict[str, Endpoint] = {
        r.path: r.endpoint for r in openai_api.routes(rt) if isinstance(r, Route)
    }

    async def forward(request: Request, op: str, deployment: str | None) -> Response:
        if authorize(rt, request.headers, AUDIENCE, key_header="api-key") is not None:
            return unauthorized()
        raw = await request.body()
        try:
            body: Any = await wire.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict):
            if deployment is not None:
                body["model"] = deployment
            word = rt.config.content_filter_word
            if request.headers.get(CONTENT_FILTER_HEADER) == "true" or (
                word and word in json.dumps(body.get("messages") or body.get("prompt") or "")
            ):
                return content_filter_error()
            raw = json.dumps(body).encode()
        response = await inner[f"/v1/{op}"](with_body(request, raw))
        if op == "chat/completions":
            return Relay(response, prefix_stream(PROMPT_FILTER_CHUNK))
        return response

    def deployments(op: str) -> Endpoint:
        async def handler(request: Request) -> Response:
            if not request.query_params.get("api-version"):
                return JSONResponse({"error": {"code": "404", "message": "Resource not found"}},
                                    status_code=404)  # fmt: skip
            return await forward(request, op, request.path_params["deployment"])

        return handler

    def v1(op: str) -> Endpoint:
        async def handler(request: Request) -> Response:
            return await forward(request, op, None)

        return handler

    async def models(request: Request) -> Response:
        if authorize(rt, request.headers, AUDIENCE, key_header="api-key") is not None:
            return unauthorized()
        return await inner["/v1/models"](request)

    ops = ("chat/completions", "completions", "embeddings")
    out: list[BaseRoute] = [
        Route(f"/openai/deployments/{{deployment}}/{op}", deployments(op), methods=["POST"])
        for op in ops
    ]
    out += [Route(f"/openai/v1/{op}", v1(op), methods=["POST"]) for op in ops]
    out += [
        Route("/openai/models", models, methods=["GET"]),
        Route("/openai/v1/models", models, methods=["GET"]),
    ]
    return out
