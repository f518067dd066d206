"""Azure ML managed online endpoint protocol: ``POST /score``.

- Auth: ``Authorization: Bearer <key | token>``: a key from ``--azure-api-keys`` or a
  token verified for audience ``https://ml.azure.com``; otherwise 401.
- ``azureml-model-deployment`` picks a deployment (echoed back in the response headers).
- Payload ``openai_chat`` (a body with ``messages``; SSE when ``stream``) or ``tgi``
  (``{"inputs", "parameters"}``; SSE when ``"stream": true``).
- Errors in Azure ML's shapes: 429 "too many pending requests" (overload and injected 429),
  503 (injected 503), and a container failure (injected 500) as 424 with
  ``ms-azureml-model-error-statuscode``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Send

from . import openai_api, tgi, wire
from .azure_openai import Endpoint, Relay, SendFilter, authorize, with_body
from .engine import NoCapacity
from .runtime import Runtime

AUDIENCE = "https://ml.azure.com"
DEPLOYMENT_HEADER = "azureml-model-deployment"
MODEL_ERROR_HEADER = "ms-azureml-model-error-statuscode"


def azureml_errors(deployment: str) -> SendFilter:
    """Rewrite the container's error answers into what the Azure ML front end sends."""
    state: dict[str, Any] = {"start": None, "body": b""}

    async def filt(message: Message, send: Send) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"azureml-model-deployment", deployment.encode()))
            message = {**message, "headers": headers}
            if message["status"] < 400:
                await send(message)
                return
            state["start"] = message
            return
        if state["start"] is None or message["type"] != "http.response.body":
            await send(message)
            return
        state["body"] += message.get("body", b"")
        if message.get("more_body"):
            return
        start = state["start"]
        status = int(start["status"])
        inner = dict(start["headers"])
        extra: dict[str, str] = {"azureml-model-deployment": deployment}
        for name in (b"retry-after", b"retry-after-ms"):
            if name in inner:
                extra[name.decode()] = inner[name].decode()
        if status == 429:
            body = {"message": "Too many pending requests; retry later."}
        elif status == 503:
            body = {"message": "Service temporarily unavailable."}
        elif status >= 500:
            body = {"message": "An error occurred when calling the model container."}
            extra[MODEL_ERROR_HEADER] = str(status)
            status = 424
        else:
            raw: bytes = state["body"]
            await send(wire.json_start(status, raw, extra))
            await send({"type": "http.response.body", "body": raw})
            return
        await wire.send_json(send, status, body, extra)

    return filt


def routes(rt: Runtime) -> list[BaseRoute]:
    chat: Endpoint = next(
        r.endpoint for r in openai_api.routes(rt)
        if isinstance(r, Route) and r.path == "/v1/chat/completions"
    )  # fmt: skip

    async def score(request: Request) -> Response:
        if authorize(rt, request.headers, AUDIENCE, key_header=None) is not None:
            return JSONResponse({"message": "Unauthorized: invalid key or token."}, 401)
        deployment = request.headers.get(DEPLOYMENT_HEADER, "default")
        raw = await request.body()
        try:
            body: Any = await wire.loads(raw)
        except ValueError:
            return JSONResponse({"message": "Request body is not valid JSON."}, 400)
        try:
            rt.engine.check_capacity()
        except NoCapacity as exc:  # the front end while the deployment scales out
            headers = {**wire.retry_headers(exc.retry_after), DEPLOYMENT_HEADER: deployment}
            return JSONResponse({"message": "Service temporarily unavailable."}, 503, headers)
        if isinstance(body, dict) and "inputs" in body:
            inner = tgi.generate(rt, body, request.headers, stream=bool(body.get("stream")))
        elif isinstance(body, dict) and "messages" in body:
            body.setdefault("model", rt.primary_model)
            inner = await chat(with_body(request, json.dumps(body).encode()))
        else:
            return JSONResponse({"message": "Expected an OpenAI chat or TGI payload."}, 400)
        return Relay(inner, lambda: azureml_errors(deployment))

    return [Route("/score", score, methods=["POST"])]
