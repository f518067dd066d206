"""SageMaker runtime protocol: ``POST /endpoints/{name}/invocations`` and
``/endpoints/{name}/invocations-response-stream``, SigV4-verified.

- Signature: SigV4 (service ``sagemaker``) checked against ``--aws-access-key-id`` /
  ``--aws-secret-access-key``; failures answer 403 ``InvalidSignatureException`` or
  ``UnrecognizedClientException`` the way botocore reads them.
- Payload: Messages API (OpenAI chat JSON, SSE when streaming) or TGI (``{"inputs",
  "parameters"}``; the non-streamed answer is a one-element list, as TGI's SageMaker route
  sends it). ``X-Amzn-SageMaker-Inference-Component`` is accepted and echoed.
- Streams are ``application/vnd.amazon.eventstream`` ``PayloadPart`` messages; with
  ``--sagemaker-part-bytes N`` the bytes are re-cut into N-byte parts that ignore line and
  event boundaries (as the real service may).
- Errors: the container's 5xx/4xx become ``ModelError`` (424, ``OriginalStatusCode``,
  ``OriginalMessage``), 429 ``ModelError`` too (with OriginalStatusCode 429), an injected
  503 ``ServiceUnavailable``; a bad body ``ValidationError`` (400); no replica ready (scaled
  to zero) the real 400 ``ValidationError`` "Inference Component has no capacity...". Each with
  ``x-amzn-ErrorType`` and a JSON body.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Send

from . import eventstream, openai_api, sigv4, tgi, wire
from .azure_openai import Endpoint, Relay, SendFilter, with_body
from .engine import NoCapacity
from .runtime import Runtime

COMPONENT_HEADER = "x-amzn-sagemaker-inference-component"
#: SageMaker's answer while an inference component has no copy (scaled to zero, or the
#: first copy still starting): every call fails like this for as long as a scale-out takes.
NO_CAPACITY = (
    "Inference Component has no capacity to process this request. ApplicationAutoScaling "
    "may be in-progress (if configured) or try to increase the capacity by invoking "
    "UpdateInferenceComponentRuntimeConfig API."
)


def aws_error(status: int, code: str, message: str, extra: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> Response:  # fmt: skip
    body = {"message": message, **(extra or {})}
    return Response(
        wire.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"x-amzn-ErrorType": code, "x-amzn-RequestId": str(uuid.uuid4()),
                 **(headers or {})},
    )  # fmt: skip


def sagemaker_filter(*, stream: bool, tgi_list: bool, part_bytes: int,
                     component: str | None) -> SendFilter:  # fmt: skip
    state: dict[str, Any] = {"start": None, "error": False, "body": b"", "pending": b""}
    common = [(b"x-amzn-requestid", str(uuid.uuid4()).encode()),
              (b"x-amzn-invoked-production-variant", b"AllTraffic")]  # fmt: skip
    if component:
        common.append((b"x-amzn-sagemaker-inference-component", component.encode()))

    async def send_error(send: Send) -> None:
        start = state["start"]
        status = int(start["status"])
        inner = {k.decode(): v.decode() for k, v in start["headers"]}
        retry = {k: inner[k] for k in ("retry-after", "retry-after-ms") if k in inner}
        original = state["body"].decode(errors="replace")
        if status == 503:
            response = aws_error(503, "ServiceUnavailable", "Service unavailable", None, retry)
        else:
            response = aws_error(
                424, "ModelError",
                f"Received server error ({status}) from primary with message \"{original}\".",
                {"OriginalStatusCode": status, "OriginalMessage": original,
                 "LogStreamArn": "arn:aws:logs:local:000000000000:log-group:/aws/sagemaker/gpusim"},
                retry,
            )  # fmt: skip
        await response({"type": "http"}, _no_receive, send)

    async def filt(message: Message, send: Send) -> None:
        if message["type"] == "http.response.start":
            state["start"] = message
            if message["status"] >= 400:
                state["error"] = True
                return
            if stream:
                headers = [
                    (b"content-type", b"application/vnd.amazon.eventstream"),
                    (b"x-amzn-sagemaker-content-type", b"text/event-stream"),
                    *common,
                ]
            else:
                headers = [(b"content-type", b"application/json"), *common]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        data: bytes = message.get("body", b"")
        more = bool(message.get("more_body"))
        if state["error"] or (not stream and tgi_list):
            state["body"] += data
            if more:
                return
            if state["error"]:
                await send_error(send)
                return
            answer = json.loads(state["body"])
            await send({"type": "http.response.body", "body": wire.dumps([answer])})
            return
        if not stream:
            await send(message)
            return
        out = b""
        if part_bytes > 0:
            state["pending"] += data
            pending: bytes = state["pending"]
            while len(pending) >= part_bytes:
                out += eventstream.payload_part(pending[:part_bytes])
                pending = pending[part_bytes:]
            if not more and pending:
                out += eventstream.payload_part(pending)
                pending = b""
            state["pending"] = pending
        elif data:
            out = eventstream.payload_part(data)
        await send({"type": "http.response.body", "body": out, "more_body": more})

    return filt


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def routes(rt: Runtime) -> list[BaseRoute]:
    chat: Endpoint = next(
        r.endpoint for r in openai_api.routes(rt)
        if isinstance(r, Route) and r.path == "/v1/chat/completions"
    )  # fmt: skip
    credentials = {rt.config.aws_access_key_id: rt.config.aws_secret_access_key}

    async def invoke(request: Request, *, stream: bool) -> Response:
        raw = await request.body()
        try:
            sigv4.verify(
                request.method, request.scope.get("raw_path", b"").decode() or request.url.path,
                request.url.query, request.headers, raw, credentials=credentials,
                service="sagemaker",
            )  # fmt: skip
        except sigv4.SignatureError as exc:
            return aws_error(403, exc.code, str(exc))
        if len(raw) > 6 * 1024 * 1024:
            return aws_error(400, "ValidationError", "Request body exceeds 6 MB")
        try:
            body: Any = await wire.loads(raw)
        except ValueError:
            return aws_error(400, "ValidationError", "Request body is not valid JSON")
        try:
            rt.engine.check_capacity()
        except NoCapacity:
            return aws_error(400, "ValidationError", NO_CAPACITY)
        is_tgi = isinstance(body, dict) and "inputs" in body
        if is_tgi:
            inner = tgi.generate(rt, body, request.headers, stream=stream)
        elif isinstance(body, dict) and "messages" in body:
            body.setdefault("model", rt.primary_model)
            if stream:
                body["stream"] = True
            inner = await chat(with_body(request, json.dumps(body).encode()))
        else:
            return aws_error(400, "ValidationError", "Expected a Messages API or TGI payload")
        component = request.headers.get(COMPONENT_HEADER)
        part_bytes = rt.config.sagemaker_part_bytes

        def make() -> SendFilter:
            return sagemaker_filter(
                stream=stream, tgi_list=is_tgi, part_bytes=part_bytes, component=component
            )

        return Relay(inner, make)

    async def invocations(request: Request) -> Response:
        return await invoke(request, stream=False)

    async def response_stream(request: Request) -> Response:
        return await invoke(request, stream=True)

    return [
        Route("/endpoints/{name}/invocations", invocations, methods=["POST"]),
        Route("/endpoints/{name}/invocations-response-stream", response_stream, methods=["POST"]),
    ]
