"""The one place the parts meet: validate -> route (with retry and failover) -> usage.

Adapters (HTTP, queue, blob) call ``get_service()`` and one of ``complete``, ``stream``,
``models`` or ``ready``. The service is built on first use from the settings and reused by
every warm invocation of the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from shared.backends.base import Backend, ByteStream, Result
from shared.backends.registry import build_backend
from shared.cache import build_cache
from shared.context import Context
from shared.errors import BackendError, DeadlineExceeded, InferenceError
from shared.lifecycle import Singleton
from shared.lines import total_tokens, usage_from_tail
from shared.recovery import Continued, Sent, continuation, read_partial
from shared.retry import call_with_retry
from shared.router import Router
from shared.schemas import Operation, validate_payload
from shared.settings import Settings, get_settings, setting_set
from shared.streaming import ForwardStream
from shared.telemetry import log_request, record_cache
from shared.telemetry import start as start_telemetry

if TYPE_CHECKING:
    from shared.limits import Admission
    from shared.model_list import ModelLister

log = logging.getLogger("shared.service")

#: Bytes of the stream's tail kept to read the usage chunk sent just before [DONE].
_USAGE_TAIL = 8192
#: Seconds a readiness report is reused.
READY_CACHE_S = 5.0


def sse_error(err: InferenceError) -> bytes:
    """An OpenAI-style error event: the ``openai`` SDK raises it as ``APIError``."""
    return b"data: " + json.dumps(err.to_dict()).encode() + b"\n\n"


class _Seen:
    """What a charged stream has forwarded so far: its tail."""

    tail = b""


def _micro_cost(ctx: Context, tokens: int | None) -> int | None:
    """What a settled answer cost, in micro-units: 0 from the cache, None when unknown."""
    if ctx.served_from_cache or tokens == 0:
        return 0
    if ctx.cost is None:
        return None
    from shared.pricing import micro

    return micro(ctx.cost)


_NO_CHOICES = re.compile(rb'"choices":\s*\[\]')


def _usage_object(block: bytes) -> bool:
    """Whether ``block`` may hold a usage event: a ``"usage":`` that is not ``null`` (with
    ``include_usage`` OpenAI and gpusim put ``"usage":null`` on every chunk; only the last
    event's is an object). Two byte counts, so ordinary chunks cost no parsing."""
    return block.count(b'"usage":') != block.count(b'"usage":null')


def drop_usage_events(block: bytes) -> bytes:
    """``block`` without its usage-only events (``"choices":[]`` and a ``usage``): the
    caller did not ask for them."""
    events = block.split(b"\n\n")
    kept = [e for e in events if not (b'"usage":' in e and _NO_CHOICES.search(e))]
    return b"\n\n".join(kept) if len(kept) > 1 or (kept and kept[0]) else b""


def did_no_work(exc: BaseException) -> bool:
    """Whether a failure happened before the endpoint produced anything: a refusal, a
    rate limit or capacity answer, a connection that failed. A timeout, a deadline or a
    stream cut after it began may have cost the endpoint its work: charged."""
    from shared.errors import (
        BackendConnectionError,
        BackendRateLimited,
        BackendRejected,
        BackendUnavailable,
        InvalidRequest,
        NotFound,
    )

    if isinstance(exc, BackendRejected | BackendRateLimited | BackendUnavailable):
        return True
    if isinstance(exc, InvalidRequest | NotFound):
        return True
    return isinstance(exc, BackendConnectionError) and exc.no_work


class _SettleOnClose:
    """Closes the inner stream, then charges what it forwarded (once), iterated or not."""

    def __init__(self, inner: ForwardStream, admission: Admission, ctx: Context, seen: _Seen):
        self._inner = inner
        self._admission = admission
        self._ctx = ctx
        self._seen = seen

    def __aiter__(self) -> AsyncIterator[bytes]:  # a ByteStream; the bytes come from forward()
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            tokens: int | None = 0
            if not self._ctx.served_from_cache:
                # the endpoint's usage (always asked for; stripped before the caller when
                # it did not ask), else the reservation stands: never a guess from events
                usage = self._ctx.stream_usage or usage_from_tail(self._seen.tail)
                tokens = total_tokens(usage)
            await self._admission.settle(tokens, None, _micro_cost(self._ctx, tokens))


def _charged(body: ForwardStream, admission: Admission, ctx: Context) -> ForwardStream:
    """``body`` forwarded; closing it charges its usage chunk (else its counted content
    events; nothing for a cache hit) and frees its ``max_parallel`` slot."""
    seen = _Seen()

    async def forward() -> AsyncGenerator[bytes, None]:
        async for chunk in body:
            seen.tail = (seen.tail + chunk)[-_USAGE_TAIL:]
            yield chunk

    return ForwardStream(forward(), _SettleOnClose(body, admission, ctx, seen))


class Service:
    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        # one environment lookup: a function without INFER_LIMITS never imports shared.limits
        self._limits = setting_set("INFER_LIMITS")
        self.cache = build_cache(self._complete)  # None unless INFER_CACHE is set
        self._lister: ModelLister | None = None
        self._ready: tuple[float, dict[str, Any]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Service:
        backends: list[Backend] = [build_backend(b) for b in settings.backends]
        from shared.capacity import Capacity

        capacity = Capacity(settings.capacity_lease_s)
        router = Router(backends, capacity=capacity, max_tokens_cap=settings.max_tokens_cap)
        return cls(settings, router)

    def validate(self, op: Operation, data: Any) -> dict[str, Any]:
        """The checked payload; a chat or completion that sets no ``max_tokens`` (nor
        ``max_completion_tokens``) gets ``INFER_MAX_TOKENS_CAP`` as its ``max_tokens``,
        forwarded: the cap then bounds what the endpoint generates, and what limits reserve."""
        cap = self.settings.max_tokens_cap
        payload = validate_payload(op, data, max_tokens_cap=cap)
        if op is not Operation.EMBEDDINGS and (
            payload.get("max_tokens") is None and payload.get("max_completion_tokens") is None
        ):
            payload["max_tokens"] = cap
        return payload

    async def admit(self, payload: dict[str, Any], ctx: Context) -> Admission | None:
        """Admit the request under its caller's limits (``INFER_LIMITS``); ``None`` when no
        limits are configured. A refusal raises ``CallerRateLimited`` (429)."""
        if not self._limits:
            return None
        self.router.check_model(str(payload.get("model") or ""))  # 404 before any counter
        from shared.limits import get_limiter
        from shared.principal import ANONYMOUS

        limiter = get_limiter()
        if limiter is None:
            return None
        model = str(payload.get("model") or "")
        cost = 0
        if limiter.prices:  # a cost_quota applies somewhere: reserve the worst case
            from shared.limits import estimate_prompt_tokens, reservation_tokens
            from shared.pricing import micro

            cap = self.settings.max_tokens_cap
            prompt = estimate_prompt_tokens(payload)
            output = reservation_tokens(payload, cap) - prompt
            inp, out = self.router.worst_prices(model)
            cost = micro(prompt * inp + output * out)
        admission = await limiter.admit(
            ctx.caller or ANONYMOUS,
            model,
            payload,
            ctx,
            cap=self.settings.max_tokens_cap,
            cost=cost,
        )
        ctx.response_headers.update(admission.headers)
        return admission

    async def complete(self, op: Operation, payload: dict[str, Any], ctx: Context) -> Result:
        """A whole answer: admitted under the caller's limits, then from the cache or the
        endpoint (retried, with failover, within the deadline); the real usage is charged
        afterwards (a cache hit costs no tokens, a failure refunds the estimate)."""
        admission = await self.admit(payload, ctx)
        if admission is None:
            return await self._answer(op, payload, ctx)
        try:
            result = await self._answer(op, payload, ctx)
        except BaseException as exc:
            # refunded only when the endpoint did no work; else the reservation stands
            await asyncio.shield(admission.settle(0 if did_no_work(exc) else None, ctx))
            raise
        tokens: int | None = 0
        if not ctx.served_from_cache:
            total = (result.usage() or {}).get("total_tokens")
            tokens = total if isinstance(total, int) else None
        await admission.settle(tokens, ctx, _micro_cost(ctx, tokens))
        return result

    async def _answer(self, op: Operation, payload: dict[str, Any], ctx: Context) -> Result:
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
        ctx.response_headers["x-infer-backend"] = result.backend
        price = self.router.price_of(result.backend)
        if price is not None:
            self._charge(ctx, result.backend, price.cost(result.usage()))
        if log.isEnabledFor(logging.INFO):  # reading usage parses the body: only when logged
            self._log_usage(op, payload, ctx, result.backend, result.usage(), started)
        return result

    async def stream(self, op: Operation, payload: dict[str, Any], ctx: Context) -> ForwardStream:
        """A stream admitted under the caller's limits: a cached answer replayed, or the
        endpoint's stream (see ``_stream``), charged its real usage when it is closed.

        The caller must ``aclose`` what it gets, iterated or not: that also settles the
        caller's limits (tokens, and the ``max_parallel`` slot).
        """
        admission = await self.admit(payload, ctx)
        try:
            if self.cache is not None:
                body = await self.cache.stream(op, payload, ctx, self._stream)
                if ctx.cache_status:
                    record_cache(ctx, ctx.cache_status)
            else:
                body = await self._stream(op, payload, ctx)
        except BaseException as exc:
            if admission is not None:
                await asyncio.shield(admission.settle(0 if did_no_work(exc) else None, ctx))
            raise
        return body if admission is None else _charged(body, admission, ctx)

    async def _stream(self, op: Operation, payload: dict[str, Any], ctx: Context) -> ForwardStream:
        """Open a stream (retried until the endpoint accepts it), then forward its bytes.

        The caller must ``aclose`` what it gets, iterated or not (``ClosingStreamingResponse``
        does): that releases the router's slot and the upstream connection.

        Errors before the first byte propagate (the caller answers with a status); errors
        after it end the stream with an OpenAI error event, since the status line is gone.
        """
        started = time.monotonic()
        rec = start_telemetry(op, payload, ctx, stream=True)

        # the endpoint always reports usage (what limits and telemetry charge); the caller
        # sees its usage event only when it asked for one
        wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        upstream = payload
        if not wants_usage and op is not Operation.EMBEDDINGS:
            options = {**(payload.get("stream_options") or {}), "include_usage": True}
            upstream = {**payload, "stream_options": options}

        async def attempt(n: int) -> ByteStream:
            return await self.router.open_stream(op, upstream, ctx)

        try:
            opened = await call_with_retry(attempt, ctx, max_retries=self.settings.max_retries)
        except BaseException as err:
            rec.end(error=err)
            if isinstance(err, InferenceError):
                self._log_failure(op, payload, ctx, err, started)
            raise
        ctx.response_headers["x-infer-backend"] = str(getattr(opened, "backend", ""))
        body = self._forward(opened, op, upstream, ctx, started, rec, strip_usage=not wants_usage)
        return ForwardStream(body, opened)

    async def _forward(
        self,
        opened: ByteStream,
        op: Operation,
        payload: dict[str, Any],
        ctx: Context,
        started: float,
        rec: Any = None,
        *,
        strip_usage: bool = False,
    ) -> AsyncGenerator[bytes, None]:
        """The stream's bytes to the caller; a stream that breaks (cut, stalled, malformed,
        ended early) is continued elsewhere (``_recover``), and one that cannot be ends
        with an OpenAI error event and no ``[DONE]``."""
        tail = b""
        rec = rec or start_telemetry(op, payload, ctx, stream=True)
        stream = opened
        backend = str(getattr(opened, "backend", ""))
        sent = Sent()
        recoveries = 0
        usage_of: Continued | None = None
        try:
            while True:
                try:
                    async with asyncio.timeout(max(ctx.remaining(), 0.0)):
                        async for chunk in stream:
                            tail = (tail + chunk)[-_USAGE_TAIL:]
                            if strip_usage and _usage_object(chunk):
                                chunk = drop_usage_events(chunk)
                                if not chunk:
                                    continue
                            sent.add(chunk)
                            rec.chunk(chunk)
                            yield chunk
                    break
                except InferenceError as err:
                    if not err.retryable or recoveries > self.settings.max_retries:
                        raise
                    rec.fail_attempt(err)
                    self._log_failure(op, payload, ctx, err, started, backend, recovering=True)
                    resumed = await self._recover(op, payload, ctx, sent, not strip_usage)
                    if resumed is None:
                        raise
                    await stream.aclose()
                    stream, usage_of = resumed, resumed
                    backend = resumed.backend
                    recoveries += 1
        except TimeoutError:
            late = DeadlineExceeded("the invocation deadline passed mid-stream")
            rec.end(error=late)
            self._log_failure(op, payload, ctx, late, started, backend)
            yield sse_error(late)
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
            await stream.aclose()
        usage = usage_from_tail(tail)
        if usage is None and usage_of is not None:
            usage = usage_of.usage  # the continuation's, which the caller did not ask for
        ctx.stream_usage = usage
        price = self.router.price_of(backend)
        if price is not None:
            self._charge(ctx, backend, price.cost(usage))
        rec.end(usage=usage, tail=tail)
        self._log_usage(op, payload, ctx, backend, usage, started)

    async def _recover(
        self,
        op: Operation,
        payload: dict[str, Any],
        ctx: Context,
        sent: Sent,
        wants_usage: bool,
    ) -> Continued | None:
        """Open the stream that completes what ``sent`` began, or None when none can.

        Only backends that continue a partial answer (``continuation``) are asked, in the
        router's order; one that timed out for this request is not (it is abandoned), and
        one that refuses the continuation (4xx) is passed over: its refusal is never the
        caller's answer, the original failure is."""
        if sent.overflow:
            return None
        partial = read_partial(bytes(sent.data))
        body = continuation(op, payload, partial)
        if body is None:
            return None
        only = (lambda b: b.config.continues) if partial.started else None

        async def attempt(n: int) -> ByteStream:
            return await self.router.open_stream(op, body, ctx, only=only, skip_rejected=True)

        try:
            opened = await call_with_retry(attempt, ctx, max_retries=self.settings.max_retries)
        except InferenceError as err:
            log.warning("stream could not be continued request_id=%s: %s", ctx.request_id,
                        err.message)  # fmt: skip
            return None
        return Continued(opened, partial, wants_usage)

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

    @staticmethod
    def _charge(ctx: Context, backend: str, cost: float | None) -> None:
        """Note what the answer cost: the context (limits, jobs, batches, the log) and the
        ``infer.cost`` counter."""
        if cost is None:
            return
        ctx.cost = (ctx.cost or 0.0) + cost
        if not ctx.served_from_cache:
            from shared.telemetry import record_cost

            record_cost(ctx, backend, cost)

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
            cost=None if ctx.cost is None else round(ctx.cost, 6),
        )

    def _log_failure(
        self,
        op: Operation,
        payload: dict[str, Any],
        ctx: Context,
        err: InferenceError,
        started: float,
        backend: str = "",
        *,
        recovering: bool = False,
    ) -> None:
        level = logging.WARNING if err.status >= 500 or err.status == 429 else logging.INFO
        log_request(
            log,
            level,
            ctx,
            payload,
            event="inference",
            outcome="recovering" if recovering else "error",
            op=op.value,
            model=payload.get("model"),
            backend=backend,
            ms=round((time.monotonic() - started) * 1000, 1),
            status=err.status,
            code=err.code,
            error=err.message,
        )


_service = Singleton(lambda: Service.from_settings(get_settings()))


def get_service() -> Service:
    """The process's service, built on first use (settings validated then, not at import)."""
    return _service.get()
