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
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from shared.backends.base import Backend, ByteStream, Result
from shared.backends.registry import build_backend
from shared.cache import build_cache
from shared.context import Context
from shared.errors import BackendError, DeadlineExceeded, InferenceError
from shared.retry import call_with_retry
from shared.router import Router
from shared.schemas import Operation, validate_payload
from shared.settings import Settings, get_settings
from shared.streaming import ForwardStream
from shared.telemetry import log_request, record_cache
from shared.telemetry import start as start_telemetry

if TYPE_CHECKING:
    from shared.model_list import ModelLister

log = logging.getLogger("shared.service")

#: Bytes of the stream's tail kept to read the usage chunk sent just before [DONE].
_USAGE_TAIL = 8192
#: Seconds a readiness report is reused.
READY_CACHE_S = 5.0


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
        self.cache = build_cache(self._complete)  # None unless INFER_CACHE is set
        self._lister: ModelLister | None = None
        self._ready: tuple[float, dict[str, Any]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Service:
        backends: list[Backend] = [build_backend(b) for b in settings.backends]
        return cls(settings, Router(backends))

    def validate(self, op: Operation, data: Any) -> dict[str, Any]:
        return validate_payload(op, data, max_tokens_cap=self.settings.max_tokens_cap)

    async def complete(self, op: Operation, payload: dict[str, Any], ctx: Context) -> Result:
        """A whole answer: from the cache, or retried (with failover) within the deadline."""
        if self.cache is not None:
            result = await self.cache.complete(op, payload, ctx, self._complete)
            if ctx.cache_status:
                record_cache(ctx, ctx.cache_status)
            return result
        return await self._complete(op, payload, ctx)

    async def _complete(self, op: Operation, payload: dict[str, Any], ctx: Context) -> Result:
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

    async def stream(self, op: Operation, payload: dict[str, Any], ctx: Context) -> ForwardStream:
        """A cached answer replayed as a stream, or the endpoint's stream (see ``_stream``).

        The caller must ``aclose`` what it gets, iterated or not.
        """
        if self.cache is not None:
            stream = await self.cache.stream(op, payload, ctx, self._stream)
            if ctx.cache_status:
                record_cache(ctx, ctx.cache_status)
            return stream
        return await self._stream(op, payload, ctx)

    async def _stream(self, op: Operation, payload: dict[str, Any], ctx: Context) -> ForwardStream:
        """Open a stream (retried until the endpoint accepts it), then forward its bytes.

        The caller must ``aclose`` what it gets, iterated or not (``ClosingStreamingResponse``
        does): that releases the router's slot and the upstream connection.

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
        return ForwardStream(self._forward(opened, op, payload, ctx, started, rec), opened)

    async def _forward(
        self,
        opened: ByteStream,
        op: Operation,
        payload: dict[str, Any],
        ctx: Context,
        started: float,
        rec: Any = None,
    ) -> AsyncGenerator[bytes, None]:
        tail = b""
        rec = rec or start_telemetry(op, payload, ctx, stream=True)
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
        except BaseException as exc:  # the caller went away (cancelled, closed)
            rec.end(error=exc)
            raise
        finally:
            await opened.aclose()
        usage = usage_from_tail(tail)
        rec.end(usage=usage, tail=tail)
        self._log_usage(op, payload, ctx, backend, usage, started)

    async def models(self, ctx: Context) -> dict[str, Any]:
        """The public model list: configured names, plus what wildcard backends serve."""
        if self._lister is None:
            from shared.model_list import ModelLister

            self._lister = ModelLister()
        return await self._lister.listing(self.router.backends, ctx)

    async def ready(self, ctx: Context) -> dict[str, Any]:
        """Probe every backend (at once); ready when at least one answers. The report is
        reused for ``READY_CACHE_S``, so a hammered ``/readyz`` does not call out each time."""
        cached = self._ready
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]

        async def probe(backend: Backend) -> dict[str, Any]:
            try:
                await backend.check_ready(ctx)
            except InferenceError as err:
                return {"ready": False, "error": err.message}
            return {"ready": True}

        results = await asyncio.gather(*(probe(b) for b in self.router.backends))
        status = {b.name: r for b, r in zip(self.router.backends, results, strict=True)}
        report = {"ready": any(r["ready"] for r in results), "backends": status}
        self._ready = (time.monotonic() + READY_CACHE_S, report)
        return report

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
