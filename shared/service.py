"""The one place the parts meet: validate -> route (with retry and failover) -> usage.

Adapters (HTTP, queue, blob) call ``get_service()`` and one of ``complete``, ``stream``,
``models`` or ``ready``. The service is built on first use from the settings and reused by
every warm invocation of the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from shared.backends.base import Backend, ByteStream, Result
from shared.backends.registry import build_backend
from shared.context import Context
from shared.errors import BackendError, DeadlineExceeded, InferenceError
from shared.retry import call_with_retry
from shared.router import Router
from shared.schemas import Operation, validate_payload
from shared.settings import Settings, get_settings
from shared.telemetry import log_request
from shared.telemetry import start as start_telemetry

log = logging.getLogger("shared.service")

#: Bytes of the stream's tail kept to read the usage chunk sent just before [DONE].
_USAGE_TAIL = 8192


def sse_error(err: InferenceError) -> bytes:
    """An OpenAI-style error event: the ``openai`` SDK raises it as ``APIError``."""
    return b"data: " + json.dumps(err.to_dict()).encode() + b"\n\n"


def usage_from_tail(tail: bytes) -> dict[str, Any] | None:
    """The ``usage`` of the last SSE event that carries one (``include_usage`` chunk)."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                usage = json.loads(line[6:]).get("usage")
            except ValueError:
                continue
            if isinstance(usage, dict):
                return usage
    return None


class Service:
    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router

    @classmethod
    def from_settings(cls, settings: Settings) -> Service:
        backends: list[Backend] = [build_backend(b) for b in settings.backends]
        return cls(settings, Router(backends))

    def validate(self, op: Operation, data: Any) -> dict[str, Any]:
        return validate_payload(op, data, max_tokens_cap=self.settings.max_tokens_cap)

    async def complete(self, op: Operation, payload: dict[str, Any], ctx: Context) -> Result:
        """A whole answer, retried (with failover) within the deadline."""
        started = time.monotonic()
        rec = start_telemetry(op, payload, ctx)

        async def attempt(n: int) -> Result:
            return await self.router.invoke(op, payload, ctx)

        try:
            result = await call_with_retry(attempt, ctx, max_retries=self.settings.max_retries)
        except BaseException as err:
            rec.end(error=err)
            if isinstance(err, InferenceError):
                self._log_failure(op, payload, ctx, err, started)
            raise
        rec.end(result=result)
        if log.isEnabledFor(logging.INFO):  # reading usage parses the body: only when logged
            self._log_usage(op, payload, ctx, result.backend, result.usage(), started)
        return result

    async def stream(
        self, op: Operation, payload: dict[str, Any], ctx: Context
    ) -> AsyncIterator[bytes]:
        """Open a stream (retried until the endpoint accepts it), then forward its bytes.

        Errors before the first byte propagate (the caller answers with a status); errors
        after it end the stream with an OpenAI error event, since the status line is gone.
        """
        started = time.monotonic()
        rec = start_telemetry(op, payload, ctx, stream=True)

        async def attempt(n: int) -> ByteStream:
            return await self.router.open_stream(op, payload, ctx)

        try:
            opened = await call_with_retry(attempt, ctx, max_retries=self.settings.max_retries)
        except BaseException as err:
            rec.end(error=err)
            if isinstance(err, InferenceError):
                self._log_failure(op, payload, ctx, err, started)
            raise
        return self._forward(opened, op, payload, ctx, started)

    async def _forward(
        self,
        opened: ByteStream,
        op: Operation,
        payload: dict[str, Any],
        ctx: Context,
        started: float,
    ) -> AsyncIterator[bytes]:
        tail = b""
        rec = ctx.telemetry or start_telemetry(op, payload, ctx, stream=True)
        backend = str(getattr(opened, "backend", ""))
        try:
            async with asyncio.timeout(max(ctx.remaining(), 0.0)):
                async for chunk in opened:
                    tail = (tail + chunk)[-_USAGE_TAIL:]
                    rec.chunk(chunk)
                    yield chunk
        except TimeoutError:
            err = DeadlineExceeded("the invocation deadline passed mid-stream")
            rec.end(error=err)
            self._log_failure(op, payload, ctx, err, started, backend)
            yield sse_error(err)
            return
        except InferenceError as err:
            rec.end(error=err)
            self._log_failure(op, payload, ctx, err, started, backend)
            yield sse_error(err)
            return
        except Exception as exc:  # never leak internals into the stream
            rec.end(error=exc)
            log.exception("stream failed request_id=%s", ctx.request_id)
            yield sse_error(BackendError(f"stream failed: {type(exc).__name__}"))
            return
        except BaseException as exc:  # the caller went away (cancelled)
            rec.end(error=exc)
            raise
        finally:
            await opened.aclose()
        usage = usage_from_tail(tail)
        rec.end(usage=usage, tail=tail)
        self._log_usage(op, payload, ctx, backend, usage, started)

    async def models(self, ctx: Context) -> dict[str, Any]:
        """The public model list: what the settings route, not what endpoints call them."""
        names: list[str] = []
        for backend in self.router.backends:
            for name in backend.config.models:
                if name != "*" and name not in names:
                    names.append(name)
        created = 0
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": created, "owned_by": "serverless-inference"}
                for n in names
            ],
        }

    async def ready(self, ctx: Context) -> dict[str, Any]:
        """Probe every backend once; ready when each model has at least one reachable backend."""
        status: dict[str, Any] = {}
        ok_any = False
        for backend in self.router.backends:
            try:
                await backend.check_ready(ctx)
            except InferenceError as err:
                status[backend.name] = {"ready": False, "error": err.message}
            else:
                status[backend.name] = {"ready": True}
                ok_any = True
        return {"ready": ok_any, "backends": status}

    def _log_usage(
        self,
        op: Operation,
        payload: dict[str, Any],
        ctx: Context,
        backend: str,
        usage: dict[str, Any] | None,
        started: float,
    ) -> None:
        log_request(
            log,
            logging.INFO,
            ctx,
            payload,
            event="inference",
            outcome="ok",
            op=op.value,
            model=payload.get("model"),
            backend=backend,
            ms=round((time.monotonic() - started) * 1000, 1),
            usage=usage,
        )

    def _log_failure(
        self,
        op: Operation,
        payload: dict[str, Any],
        ctx: Context,
        err: InferenceError,
        started: float,
        backend: str = "",
    ) -> None:
        level = logging.WARNING if err.status >= 500 or err.status == 429 else logging.INFO
        log_request(
            log,
            level,
            ctx,
            payload,
            event="inference",
            outcome="error",
            op=op.value,
            model=payload.get("model"),
            backend=backend,
            ms=round((time.monotonic() - started) * 1000, 1),
            status=err.status,
            code=err.code,
            error=err.message,
        )


_lock = threading.Lock()
_service: Service | None = None


def get_service() -> Service:
    """The process's service, built on first use (settings validated then, not at import)."""
    global _service
    if _service is None:
        with _lock:
            if _service is None:
                _service = Service.from_settings(get_settings())
    return _service


def reset_service() -> None:
    """Forget the service and settings (tests; devhost after changing the environment)."""
    global _service
    from shared.settings import reset_settings
    from shared.telemetry import reset as reset_telemetry

    with _lock:
        _service = None
    reset_settings()
    reset_telemetry()
