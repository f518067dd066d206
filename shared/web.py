"""HTTP handlers shared by every HTTP function, on Azure and on AWS alike.

Each handler takes a Starlette ``Request`` and returns a Starlette ``Response``: the
FastAPI apps in ``functions/<name>/app.py`` (served by Mangum on Lambda, by uvicorn behind
Lambda Web Adapter for streaming) route to them, and the Azure functions in
``functions/<name>/azure.py`` call them directly with the ``Request`` the Functions host
hands over when HTTP streams are enabled. One code path, so behaviour cannot drift between
platforms.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from shared.context import Context
from shared.errors import (
    AtCapacity,
    AuthenticationFailed,
    ConfigError,
    InferenceError,
    InvalidRequest,
    PayloadTooLarge,
)
from shared.schemas import Operation, loads
from shared.service import get_service
from shared.settings import get_settings
from shared.telemetry import enabled as telemetry_enabled
from shared.telemetry import flush
from shared.web_stream import ClosingStreamingResponse

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("shared.web")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def error_response(
    err: InferenceError, request_id: str | None = None, ctx: Context | None = None
) -> Response:
    """OpenAI's error envelope. A configuration error is logged with its detail (the setting
    and field at fault) and told only to a caller the app authenticated: the others learn
    that the service is misconfigured, not how."""
    if isinstance(err, ConfigError):
        request_id = request_id or uuid.uuid4().hex  # the caller and the log share it
        log.error("configuration error request_id=%s: %s", request_id, err.message)
        caller = ctx.caller if ctx is not None else None
        if not caller or caller == "anonymous":
            err = ConfigError(
                f"the service is misconfigured; its log names the setting (request_id {request_id})"
            )
    headers = err.headers()
    if request_id:
        headers["x-request-id"] = request_id
    return Response(
        json.dumps(err.to_dict()).encode(),
        status_code=err.status,
        media_type="application/json",
        headers=headers,
    )


def internal_error(exc: BaseException, request_id: str | None = None) -> Response:
    """500 envelope for a bug: the traceback goes to the log, never to the caller."""
    log.error("unhandled error request_id=%s", request_id, exc_info=exc)
    return error_response(InferenceError("internal error"), request_id)


def request_context(request: Request) -> Context:
    settings = get_settings()
    rid = request.headers.get("x-request-id") or request.headers.get("x-ms-client-request-id")
    lambda_context = request.scope.get("aws.context")  # set by Mangum on Lambda
    if lambda_context is not None:
        ctx = Context.from_lambda(lambda_context, request_id=rid)
        if ctx.remaining() > settings.request_timeout_s:
            ctx.deadline = ctx.clock() + settings.request_timeout_s
    else:
        ctx = Context.with_timeout(settings.request_timeout_s, request_id=rid)
    if rid:  # the caller's id is echoed and logged; the endpoint gets ours
        ctx.call_id = uuid.uuid4().hex
    ctx.traceparent = request.headers.get("traceparent")
    ctx.entry = "http"
    return ctx


async def authenticate_caller(request: Request, ctx: Context | None = None) -> str:
    """The caller's stable id (``shared.callers``): a key id, a token's caller claim, an IAM
    principal, or ``anonymous`` when no inbound auth is configured; 401 otherwise."""
    from shared.principal import ANONYMOUS, iam_principal, inbound_auth_set

    if not inbound_auth_set():  # nothing to check a key or token against
        return iam_principal(request) or ANONYMOUS
    from shared.callers import get_authenticator

    wait_s = min(5.0, max(ctx.remaining(), 0.1)) if ctx is not None else 5.0
    return await get_authenticator().caller(request, wait_s)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(raw: bytes) -> Any:
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    return loads(raw)  # a body nested too deeply is a 400 too, not a RecursionError


async def openai_endpoint(request: Request, op: Operation) -> Response:
    """POST /v1/chat/completions | /v1/completions | /v1/embeddings."""
    ctx: Context | None = None
    try:
        ctx = request_context(request)
        ctx.caller = await authenticate_caller(request, ctx)
        ctx.cache_control = request.headers.get("cache-control", "")
        service = get_service()
        raw = await read_body(request, service.settings.max_body_bytes)
        payload = service.validate(op, decode_json(raw))
        if payload.get("stream") and op is not Operation.EMBEDDINGS:
            body = await service.stream(op, payload, ctx)
            return ClosingStreamingResponse(
                body,
                media_type="text/event-stream",
                headers=_rid(ctx, SSE_HEADERS),
                background=BackgroundTask(flush, ctx) if telemetry_enabled() else None,
            )
        ctx.prefer_async = _prefers_async(request) and _jobs_configured()
        try:
            result = await service.complete(op, payload, ctx)
        except AtCapacity:
            if not ctx.prefer_async:
                raise
            from shared.jobs.http import respond_async

            await flush(ctx)
            try:
                return await respond_async(request, op.url, payload, ctx)
            except Exception as exc:  # no job could be queued: the caller gets the 429
                log.warning("respond-async: no job queued (%s)", type(exc).__name__)
                raise AtCapacity(
                    f"every backend serving '{payload.get('model')}' is at capacity",
                    retry_after=1.0,
                ) from None
        await flush(ctx)
        return Response(result.content, media_type="application/json", headers=_rid(ctx))
    except InferenceError as err:
        await flush(ctx)
        return error_response(err, ctx.request_id if ctx else None, ctx)
    except Exception as exc:
        await flush(ctx)
        return internal_error(exc, ctx.request_id if ctx else None)


def _prefers_async(request: Request) -> bool:
    """RFC 7240 ``Prefer: respond-async`` (among other preferences, any case)."""
    prefer = request.headers.get("prefer")
    if not prefer:
        return False
    return any(p.split(";")[0].strip().lower() == "respond-async" for p in prefer.split(","))


def _jobs_configured() -> bool:
    """Whether this app can queue a job (a queue is configured for it)."""
    from shared.storage.queues import queue_configured

    return queue_configured()


def _rid(ctx: Context, base: dict[str, str] | None = None) -> dict[str, str]:
    headers = {**(base or {}), **ctx.response_headers, "x-request-id": ctx.request_id}
    if ctx.cache_status:
        headers["x-cache"] = ctx.cache_status
        if ctx.cache_distance is not None:
            headers["x-cache-distance"] = f"{ctx.cache_distance:.4f}"
    return headers


async def usage_endpoint(request: Request) -> Response:
    """GET /v1/usage[?model=]: the authenticated caller's limits now: per rule, what is used
    (tokens, money, requests in flight) and what remains, charging nothing."""
    ctx: Context | None = None
    try:
        ctx = request_context(request)
        caller = ctx.caller = await authenticate_caller(request, ctx)
        model = request.query_params.get("model")
        if model is not None and not (0 < len(model) <= 256 and model.isprintable()):
            raise InvalidRequest("model: 1-256 printable characters", param="model")
        limits: list[dict[str, Any]] = []
        if get_service()._limits:
            from shared.limits import get_limiter

            limiter = get_limiter()
            if limiter is not None:
                limits = await limiter.usage(caller, model, ctx)
        body = {"object": "usage", "caller": caller, "model": model, "limits": limits}
        return Response(json.dumps(body).encode(), media_type="application/json",
                        headers=_rid(ctx))  # fmt: skip
    except InferenceError as err:
        return error_response(err, ctx.request_id if ctx else None, ctx)
    except Exception as exc:
        return internal_error(exc, ctx.request_id if ctx else None)


async def models_endpoint(request: Request) -> Response:
    """GET /v1/models: the models this deployment routes."""
    ctx: Context | None = None
    try:
        ctx = request_context(request)
        ctx.caller = await authenticate_caller(request, ctx)
        data = await get_service().models(ctx)
        return Response(json.dumps(data).encode(), media_type="application/json")
    except InferenceError as err:
        return error_response(err, ctx.request_id if ctx else None, ctx)
    except Exception as exc:
        return internal_error(exc)


async def healthz_endpoint(request: Request) -> Response:
    """Liveness: the process answers. Touches no setting and no backend."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz_endpoint(request: Request) -> Response:
    """Readiness: settings are valid and at least one backend answers.

    Anyone gets the status (200/503) and ``{"ready": ...}``; the per-backend details (names,
    errors) only a caller that presents a configured key does. The probe is cached briefly.
    """
    try:
        ctx = Context.with_timeout(min(get_settings().request_timeout_s, 10.0))
        report = await get_service().ready(ctx)
        details = await _authenticated(request)
    except InferenceError as err:
        return error_response(err)
    except Exception as exc:
        return internal_error(exc)
    status = 200 if report["ready"] else 503
    body = report if details else {"ready": report["ready"]}
    return Response(json.dumps(body).encode(), status_code=status, media_type="application/json")


async def _authenticated(request: Request) -> bool:
    """A caller check is configured and this request passed it (no check: no one has)."""
    from shared.principal import ANONYMOUS

    try:
        caller = await authenticate_caller(request)
    except AuthenticationFailed:
        return False
    return caller != ANONYMOUS


Endpoint = Callable[[Request], Awaitable[Response]]


def route(app: FastAPI, path: str, *, methods: list[str]) -> Callable[[Endpoint], Endpoint]:
    """Register an endpoint that takes the ``Request`` and nothing else as a plain Starlette
    route of ``app``. FastAPI's own routes would solve dependencies on every request (there
    are none) and, on an endpoint's first call, read and tokenize its source file for error
    context: ~6 ms of every cold start, and CPU on every request, for nothing these
    endpoints use. Path parameters are in ``request.path_params``."""

    def register(endpoint: Endpoint) -> Endpoint:
        app.router.add_route(path, endpoint, methods=methods)
        return endpoint

    return register


def create_app(title: str) -> FastAPI:
    """A bare FastAPI app whose framework errors (404, 405) use OpenAI's error envelope.

    No docs or OpenAPI routes: each function exposes only its own endpoints.
    """
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException

    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        err = InferenceError(str(getattr(exc, "detail", "error")), status=status)
        err.type = "invalid_request_error" if status < 500 else "server_error"
        return error_response(err)

    app.add_exception_handler(HTTPException, http_error)
    return app
