"""HTTP handlers of the jobs API, written once for Azure (Blueprint) and AWS (FastAPI+Mangum).

- ``POST /v1/jobs``: body = one OpenAI Batch line. The line and its body are validated
  first (400 otherwise), the job record is stored as ``queued``, then the queue message is
  sent; answers 202 ``{"id", "status": "queued"}`` with ``Location`` = this path + ``/{id}``
  (``/api/v1/jobs/{id}`` on Azure, ``/v1/jobs/{id}`` on AWS). If the message cannot be sent
  the record is removed again and the answer is 503: no job exists that nothing will run.
- ``Idempotency-Key`` header: the job id is derived from (caller, key). The same key with the
  same line answers 200 with the existing record; with a different line 409. A retried POST
  whose job was stored but never enqueued (a crash between the two) re-sends the message.
- ``GET /v1/jobs/{id}``: the record (docs/jobs.md), or 404 in OpenAI's error envelope. When
  inbound keys are configured a caller sees only its own jobs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shared.blocking import run_blocking
from shared.callers import aliases
from shared.context import Context
from shared.errors import InferenceError, InvalidRequest, NotFound
from shared.jobs.model import (
    JOB_ID,
    JobLine,
    JobRecord,
    MalformedMessage,
    idempotent_id,
    parse_line,
)
from shared.jobs.store import PreconditionFailed, get_job_store
from shared.principal import ANONYMOUS
from shared.service import get_service
from shared.settings import setting_set
from shared.storage import StorageError
from shared.web import (
    authenticate_caller,
    decode_json,
    error_response,
    internal_error,
    read_body,
    request_context,
)

log = logging.getLogger("shared.jobs.http")

#: A queued, never-attempted job this old is re-enqueued by an idempotent retry of its POST.
RESEND_AFTER_S = 30.0


class IdempotencyConflict(InvalidRequest):
    status = 409
    code = "idempotency_key_conflict"


class QueueUnavailable(InferenceError):
    status = 503
    code = "queue_unavailable"


class StoreUnavailable(InferenceError):
    """The job store did not answer (storage outage, timeout): the caller retries later."""

    status = 503
    code = "job_store_unavailable"


def _store_down(exc: Exception, request_id: str | None) -> Response:
    log.error("job store unavailable request_id=%s: %s", request_id, type(exc).__name__)
    err = StoreUnavailable("the job store is unavailable; try again", retry_after=1.0)
    return error_response(err, request_id)


#: How long a submitted job holds one of its caller's ``max_queued_jobs`` if nothing frees
#: it (a worker that died without writing the job's end).
QUEUED_JOB_HOLD_S = 24 * 3600.0


def _limiter() -> Any:
    """The limiter when ``INFER_LIMITS`` is set (else None, importing nothing)."""
    if not setting_set("INFER_LIMITS"):
        return None
    from shared.limits import get_limiter

    return get_limiter()


def _json(data: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _send(message: dict[str, Any]) -> None:
    from shared.storage.queues import get_queue

    get_queue().send(message)


async def _check_callback(url: str) -> None:
    """Refuse a callback URL that resolves to a non-public address (400, names the field)."""
    from shared.jobs.callback_guard import RESOLVE_TIMEOUT_S, CallbackRefused, checked
    from shared.jobs.config import get_job_settings

    try:
        await checked(url, get_job_settings().callback_policy(), None, RESOLVE_TIMEOUT_S)
    except CallbackRefused as exc:
        raise InvalidRequest(str(exc), param="callback_url") from None


async def create_job_endpoint(request: Request) -> Response:
    """POST /v1/jobs."""
    ctx: Context | None = None
    try:
        ctx = request_context(request)
        caller = ctx.caller = await authenticate_caller(request, ctx)
        service = get_service()
        raw = await read_body(request, service.settings.max_body_bytes)
        try:
            line = parse_line(decode_json(raw))
        except MalformedMessage as exc:
            raise InvalidRequest(exc.reason, param=exc.param) from None
        if line.body_ref is not None:
            raise InvalidRequest(
                "'body_ref' is for queue messages; send the 'body'", param="body_ref"
            )
        service.validate(line.op, line.body)
        if ctx.traceparent and not line.traceparent:  # the job continues the caller's trace
            line = dataclasses.replace(line, traceparent=ctx.traceparent)
        if line.callback_url:
            await _check_callback(line.callback_url)
        base = request.url.path.rstrip("/")
        return await submit(line, caller, ctx, base, request.headers.get("idempotency-key"))
    except InferenceError as err:
        return error_response(err, ctx.request_id if ctx else None, ctx)
    except Exception as exc:
        if _is_storage_failure(exc):
            return _store_down(exc, ctx.request_id if ctx else None)
        return internal_error(exc, ctx.request_id if ctx else None)


async def submit(
    line: JobLine, caller: str, ctx: Context, jobs_path: str, key: str | None = None
) -> Response:
    """Store ``line`` as a queued job and send its message: 202 with ``Location`` (under
    ``jobs_path``), or 200 with the existing record for a repeated ``Idempotency-Key``."""
    job_id = idempotent_id(caller, key) if key else "job_" + uuid.uuid4().hex
    location = jobs_path + "/" + job_id
    headers = {"location": location, "x-request-id": ctx.request_id}
    jobs = get_job_store()
    record = JobRecord.new(line, job_id, caller=caller)
    limiter = _limiter()
    if limiter is not None:  # the caller's submission rate and its jobs queued (429)
        await limiter.admit_job(caller, job_id, ctx, QUEUED_JOB_HOLD_S)
    try:
        stored = await jobs.acreate(record)
    except PreconditionFailed:
        existing = await jobs.aget(job_id)
        if existing is None or existing.record.request_hash != record.request_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request",
                param="Idempotency-Key",
            ) from None
        old = existing.record
        if (
            old.status == "queued"
            and old.attempts == 0
            and time.time() - old.created_at > RESEND_AFTER_S
        ):
            await run_blocking(_send, line.message(job_id, old.seed(existing.etag)))
        return _json(old.public(), 200, headers)
    try:
        # The message names the stored version, so the worker claims it with one
        # conditional write and reads nothing first.
        await run_blocking(_send, line.message(job_id, record.seed(stored.etag)))
    except Exception as exc:
        log.error("job %s: enqueue failed: %s", job_id, exc)
        await run_blocking(jobs.delete, job_id)
        if limiter is not None:
            await limiter.job_done(caller, job_id)
        raise QueueUnavailable("the job could not be queued; try again") from exc
    return _json({"id": job_id, "status": "queued"}, 202, headers)


async def respond_async(
    request: Request, op_url: str, payload: dict[str, Any], ctx: Context
) -> Response:
    """``Prefer: respond-async`` met a model at capacity: the request becomes a job (202,
    ``Location`` under the app's ``/v1/jobs``) that the queue worker runs when a slot frees."""
    path = request.url.path
    prefix = path[: path.index("/v1/")] if "/v1/" in path else ""
    line = parse_line({"custom_id": ctx.request_id, "method": "POST", "url": op_url,
                       "body": payload})  # fmt: skip
    if ctx.traceparent:
        line = dataclasses.replace(line, traceparent=ctx.traceparent)
    response = await submit(line, ctx.caller or ANONYMOUS, ctx, prefix + "/v1/jobs",
                            request.headers.get("idempotency-key"))  # fmt: skip
    response.headers["preference-applied"] = "respond-async"
    return response


def path_job_id(request: Request) -> str:
    """The ``{id}`` of ``/…/jobs/{id}``: from the route's path params, else the URL path."""
    value = request.path_params.get("id") if hasattr(request, "path_params") else None
    if value:
        return str(value)
    return request.url.path.rstrip("/").rsplit("/", 1)[-1]


async def get_job_endpoint(request: Request, job_id: str | None = None) -> Response:
    """GET /v1/jobs/{id}."""
    try:
        caller = await authenticate_caller(request)
        job_id = job_id or path_job_id(request)
        found = await get_job_store().aget(job_id) if JOB_ID.match(job_id) else None
        if found is None or (found.record.caller or ANONYMOUS) not in aliases(caller):
            raise NotFound(f"No job with id '{job_id}'", code="job_not_found", param="id")
        return _json(found.record.public(), 200)
    except InferenceError as err:
        return error_response(err)
    except Exception as exc:
        if _is_storage_failure(exc):
            return _store_down(exc, None)
        return internal_error(exc)


def _is_storage_failure(exc: BaseException) -> bool:
    """A failure of the store itself: ours (``StorageError``), or the SDK's transport and
    service errors (azure-core, botocore) that reach us unwrapped."""
    if isinstance(exc, StorageError | TimeoutError | ConnectionError):
        return True
    module = type(exc).__module__
    return module.startswith(("azure.core", "azure.storage", "botocore", "urllib3"))
