"""Telemetry: one facade the hot path calls, no-op unless an exporter is configured.

Nothing configured (no ``OTEL_EXPORTER_OTLP_*ENDPOINT``, no
``APPLICATIONINSIGHTS_CONNECTION_STRING``, ``INFER_METRICS_EMF`` and
``INFER_METRICS_PROMETHEUS`` off): every function here returns at once and no telemetry
library is imported; an incoming ``traceparent`` is still passed on to the endpoint.
Configured: ``shared.telemetry.otel`` (OpenTelemetry, imported on first use) and/or
``shared.telemetry.emf`` (CloudWatch EMF on stdout) record the metrics and spans of
docs/telemetry.md, following the OpenTelemetry GenAI semantic conventions.

The service opens one ``Request`` per request (``start``), the router one attempt per try
toward a backend (``attempt``), and the adapters ``flush`` before an invocation returns: a
frozen serverless process exports nothing, so each invocation sends what it recorded,
bounded by its deadline.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from shared.lifecycle import Singleton
from shared.lines import data_events
from shared.telemetry import names as N

if TYPE_CHECKING:
    from shared.backends.base import Backend, Result
    from shared.context import Context
    from shared.telemetry.redact import Redactor

__all__ = [
    "attempt",
    "capture",
    "enabled",
    "flush",
    "flush_sync",
    "flushing",
    "log_request",
    "prometheus_text",
    "record_batch",
    "record_cache",
    "record_circuit",
    "record_failover",
    "record_job_start",
    "record_limit",
    "record_probe",
    "record_queue_time",
    "record_retry",
    "record_throttle",
    "reset",
    "start",
    "trace_id",
    "traceparent",
]

Attrs = dict[str, Any]

#: Operation path -> ``gen_ai.operation.name``.
OPERATIONS = {
    "chat/completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
#: Request fields -> span attributes.
REQUEST_FIELDS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "n": "gen_ai.request.choice.count",
}
#: Captured stream bytes kept for ``gen_ai.output.messages``.
CAPTURE_LIMIT = 256 * 1024
_CONTENT = re.compile(rb'"(?:content|text|arguments)":\s*"(?!")')
_TRUE = ("1", "true", "yes", "on")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


class Sink(Protocol):
    push: bool

    def record(self, metric: N.Metric, value: float, attrs: Attrs) -> None: ...

    def flush(self, timeout_s: float) -> None: ...

    def shutdown(self) -> None: ...


class _Telemetry:
    """The configured sinks (built once per process, on first use)."""

    def __init__(self, sinks: list[Sink], otel: Any) -> None:
        self.sinks = sinks
        self.otel = otel
        self.tracing: Any = otel if otel is not None and otel.tracer is not None else None
        self.push = any(s.push for s in sinks)
        self._servers: dict[str, Attrs] = {}
        self._flushed = threading.Condition()
        self._asked = 0  # flushes asked for
        self._done = 0  # the last ask a finished flush covered
        self._running = False

    def record(self, metric: N.Metric, value: float, attrs: Attrs) -> None:
        for sink in self.sinks:
            sink.record(metric, value, attrs)

    def backend_attrs(self, backend: Backend) -> Attrs:
        """``gen_ai.provider.name``, ``server.address``/``port`` and the backend name."""
        found = self._servers.get(backend.name)
        if found is None:
            config: Any = backend.config
            url = config.server_url()
            if url:
                parts = urlsplit(str(url))
                host, port = (
                    parts.hostname or "",
                    parts.port or (443 if parts.scheme == "https" else 80),
                )
            else:
                host, port = "", 0
            found = {
                "gen_ai.provider.name": config.provider or str(config.kind),
                "server.address": host,
                "server.port": port,
                "infer.backend": backend.name,
            }
            self._servers[backend.name] = found
        return found

    def flush(self, timeout_s: float) -> None:
        """Export everything recorded so far. Concurrent invocations share flushes: one that
        asks while another flush runs waits for the next one, which covers both."""
        deadline = time.monotonic() + timeout_s
        with self._flushed:
            self._asked += 1
            mine = self._asked
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._flushed.wait(left)
                if self._done >= mine:
                    return
            self._running = True
            covers = self._asked
        try:
            for sink in self.sinks:
                sink.flush(max(deadline - time.monotonic(), 0.001))
        finally:
            with self._flushed:
                self._running = False
                self._done = covers
                self._flushed.notify_all()

    def shutdown(self) -> None:
        for sink in self.sinks:
            sink.shutdown()


def _build() -> _Telemetry | None:
    env = os.environ
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        otlp, appinsights = False, None
    else:
        otlp = any(
            env.get(k)
            for k in (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            )
        )
        appinsights = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or None
    prometheus = _truthy(env.get("INFER_METRICS_PROMETHEUS"))
    sinks: list[Sink] = []
    otel = None
    if otlp or appinsights or prometheus:
        from shared.telemetry.otel import Otel

        otel = Otel(appinsights=appinsights, prometheus=prometheus)
        sinks.append(otel)
    if _truthy(env.get("INFER_METRICS_EMF")):
        from shared.telemetry.emf import EmfSink

        sinks.append(EmfSink())
    return _Telemetry(sinks, otel) if sinks else None


def _shutdown(state: _Telemetry | None) -> None:
    if state is not None:
        state.shutdown()


_state = Singleton(_build, close=_shutdown)
_get = _state.get


def enabled() -> bool:
    return _get() is not None


def capture() -> Redactor | None:
    """The redactor when content capture is on (``INFER_CAPTURE_CONTENT``), else None.

    ``INFER_LOG_PROMPTS`` (the former setting) is read as the same opt-in.
    """
    return _capture.get()


def _build_capture() -> Redactor | None:
    env = os.environ
    if not (_truthy(env.get("INFER_CAPTURE_CONTENT")) or _truthy(env.get("INFER_LOG_PROMPTS"))):
        return None
    from shared.telemetry.redact import Redactor, parse_patterns

    return Redactor(parse_patterns(env.get("INFER_REDACT_PATTERNS")))


_capture = Singleton(_build_capture)


def _clean(attrs: Attrs) -> Attrs:
    return {k: v for k, v in attrs.items() if v is not None and v != ""}


def _error_type(err: BaseException) -> str:
    code = getattr(err, "code", None)
    return str(code) if code else type(err).__name__


def _content_of(payload: dict[str, Any]) -> Any:
    for key in ("messages", "prompt", "input"):
        if key in payload:
            return payload[key]
    return None


#: Captured content kept per span event (characters, after redaction).
CAPTURE_LIMIT = 16384


def _redacted_json(value: Any, redactor: Redactor, limit: int = CAPTURE_LIMIT) -> str:
    """``value`` as JSON, truncated to ``limit`` and redacted (truncated first: redaction
    never scans a megabyte prompt)."""
    return redactor(json.dumps(value, ensure_ascii=False), limit)


# -- one request -------------------------------------------------------------------------


class Attempt:
    """One try toward a backend: a CLIENT span and ``gen_ai.client.operation.duration``."""

    def __init__(self, req: Request, backend: Backend) -> None:
        self.req = req
        self.attrs = req.t.backend_attrs(backend)
        self.t0 = time.perf_counter()
        self.closed = False
        self.span: Any = None
        tracing = req.t.tracing
        if tracing is not None:
            self.span = tracing.start_span(
                req.name, "client", None, req.span, {**req.base, **self.attrs}
            )

    def end(self, error: BaseException | None = None) -> None:
        """The try ended. A successful one is closed by the request's end, which knows the
        response model (and, for a stream, when its last byte arrived)."""
        if error is not None:
            self.close(error, None)

    def close(self, error: BaseException | None, response_model: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        req = self.req
        attrs = req.metric_attrs(self.attrs, error, response_model)
        req.t.record(N.CLIENT_DURATION, time.perf_counter() - self.t0, attrs)
        if error is not None and getattr(error, "status", None) == 429:
            req.t.record(N.THROTTLES, 1, {**attrs, "infer.throttle.source": "backend"})
        if self.span is not None:
            extra = {"error.type": attrs.get("error.type")}
            req.t.tracing.end_span(
                self.span, _clean(extra), attrs.get("error.type") if error else None
            )


class Request:
    """One request's measurements, spans and outcome (the real one: telemetry is on)."""

    active = True

    def __init__(
        self, t: _Telemetry, op: str, payload: dict[str, Any], ctx: Context, stream: bool
    ) -> None:
        self.t = t
        self.ctx = ctx
        self.stream = stream
        self.op = OPERATIONS.get(op, op)
        self.model = str(payload.get("model") or "")
        self.name = f"{self.op} {self.model}".strip()
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.events = 0
        self.attempt: Attempt | None = None
        self.cache: str | None = None
        self.limit: str | None = None
        self.done = False
        self.redactor = capture()
        self.captured: bytearray | None = (
            bytearray() if stream and self.redactor is not None else None
        )
        self.base: Attrs = _clean(
            {
                "gen_ai.operation.name": self.op,
                "gen_ai.request.model": self.model,
                "infer.caller": ctx.caller or "anonymous",
            }
        )
        self.span: Any = None
        tracing = t.tracing
        if tracing is not None:
            attrs = dict(self.base)
            for field, attr in REQUEST_FIELDS.items():
                value = payload.get(field)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    attrs[attr] = value
            stop = payload.get("stop")
            if stop:
                attrs["gen_ai.request.stop_sequences"] = [stop] if isinstance(stop, str) else stop
            attrs["infer.request_id"] = ctx.request_id
            attrs["infer.trigger"] = ctx.entry
            kind = "server" if ctx.entry == "http" else "internal"
            self.span = tracing.start_span(self.name, kind, ctx.traceparent, None, attrs)
            if self.redactor is not None:
                text = _redacted_json(_content_of(payload), self.redactor)
                tracing.event(self.span, "gen_ai.input.messages", {"gen_ai.input.messages": text})

    def metric_attrs(
        self, backend: Attrs | None, error: BaseException | None, response_model: str | None
    ) -> Attrs:
        attrs = {**self.base, **(backend or {})}
        if response_model:
            attrs["gen_ai.response.model"] = response_model
        if error is not None:
            attrs["error.type"] = _error_type(error)
        cache = self.cache or getattr(self.ctx, "cache_status", None)
        if cache:
            attrs["infer.cache"] = cache
        if self.limit:
            attrs["infer.limit"] = self.limit
        return attrs

    def begin(self, backend: Backend) -> Attempt:
        if self.attempt is not None and not self.attempt.closed:
            self.attempt.close(None, None)
        self.attempt = Attempt(self, backend)
        return self.attempt

    def fail_attempt(self, error: BaseException) -> None:
        """The current try broke mid-stream (it is being continued on another)."""
        if self.attempt is not None:
            self.attempt.close(error, None)

    def chunk(self, data: bytes) -> None:
        """A stream chunk about to reach the caller: time to first content, token gaps."""
        n = len(_CONTENT.findall(data))
        if n:
            now = time.perf_counter()
            if self.first is None:
                self.first = now
            self.last = now
            self.events += n
        if self.captured is not None and len(self.captured) < CAPTURE_LIMIT:
            self.captured += data

    def end(
        self,
        *,
        result: Result | None = None,
        usage: dict[str, Any] | None = None,
        tail: bytes | None = None,
        error: BaseException | None = None,
    ) -> None:
        if self.done:
            return
        self.done = True
        now = time.perf_counter()
        data: dict[str, Any] | None = None
        if result is not None:
            try:
                data = result.json()
            except ValueError:
                data = None
            found = data.get("usage") if data else None
            usage = found if isinstance(found, dict) else usage
        elif tail:
            data = _last_event(tail)
        response_model = str(data.get("model")) if data and data.get("model") else None
        backend = self.attempt.attrs if self.attempt is not None else None
        if self.attempt is not None:
            self.attempt.close(error, response_model)
        attrs = self.metric_attrs(backend, error, response_model)
        t = self.t
        inp = out = None
        if usage and error is None:
            inp, out = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if backend is not None:  # tokens the endpoint reported (a cache hit has none)
                client = self.metric_attrs(backend, None, response_model)
                for kind, value in (("input", inp), ("output", out)):
                    if isinstance(value, int):
                        t.record(N.CLIENT_TOKENS, value, {**client, "gen_ai.token.type": kind})
        t.record(N.SERVER_DURATION, now - self.t0, attrs)
        if self.stream and error is None and self.first is not None and self.last is not None:
            t.record(N.SERVER_TTFT, self.first - self.t0, attrs)
            tokens = out if isinstance(out, int) and out > 0 else self.events
            if tokens > 1 and self.last > self.first:
                t.record(N.SERVER_TPOT, (self.last - self.first) / (tokens - 1), attrs)
        if self.span is not None:
            self._end_span(attrs, data, inp, out, error)

    def _end_span(
        self,
        attrs: Attrs,
        data: dict[str, Any] | None,
        inp: Any,
        out: Any,
        error: BaseException | None,
    ) -> None:
        tracing = self.t.tracing
        extra: Attrs = {k: attrs.get(k) for k in ("gen_ai.provider.name", "infer.backend",
                        "server.address", "server.port", "gen_ai.response.model", "error.type",
                        "infer.cache", "infer.limit")}  # fmt: skip
        if data:
            extra["gen_ai.response.id"] = data.get("id")
            reasons = [
                str(c.get("finish_reason"))
                for c in data.get("choices") or []
                if isinstance(c, dict) and c.get("finish_reason")
            ]
            if reasons:
                extra["gen_ai.response.finish_reasons"] = reasons
        if isinstance(inp, int):
            extra["gen_ai.usage.input_tokens"] = inp
        if isinstance(out, int):
            extra["gen_ai.usage.output_tokens"] = out
        if self.redactor is not None and error is None:
            output = _output_messages(data, bytes(self.captured or b""), self.stream)
            text = _redacted_json(output, self.redactor)
            tracing.event(self.span, "gen_ai.output.messages", {"gen_ai.output.messages": text})
        tracing.end_span(self.span, _clean(extra), attrs.get("error.type") if error else None)


class _NoRequest:
    """Telemetry off: every call does nothing."""

    active = False
    attempt = None
    span = None

    def begin(self, backend: Backend) -> _NoAttempt:
        return NO_ATTEMPT

    def fail_attempt(self, error: BaseException) -> None:
        return None

    def chunk(self, data: bytes) -> None:
        return None

    def end(self, **kwargs: Any) -> None:
        return None


class _NoAttempt:
    def end(self, error: BaseException | None = None) -> None:
        return None


NO_REQUEST = _NoRequest()
NO_ATTEMPT = _NoAttempt()


def _last_event(tail: bytes) -> dict[str, Any] | None:
    """id, model and the finish reasons of a stream, from the events in its tail."""
    events = list(data_events(tail))
    if not events:
        return None
    merged: dict[str, Any] = {"id": events[-1].get("id"), "model": events[-1].get("model")}
    merged["choices"] = [c for e in events for c in e.get("choices") or [] if isinstance(c, dict)]
    return merged


def _output_messages(data: dict[str, Any] | None, streamed: bytes, stream: bool) -> Any:
    if not stream:
        if not data:
            return None
        return [
            c.get("message") or {"text": c.get("text")}
            for c in data.get("choices") or []
            if isinstance(c, dict)
        ]
    parts: list[str] = []
    for event in data_events(streamed):
        for c in event.get("choices") or []:
            if not isinstance(c, dict):
                continue
            delta = c.get("delta") if isinstance(c.get("delta"), dict) else {}
            piece = delta.get("content") if delta else c.get("text")
            if isinstance(piece, str):
                parts.append(piece)
    return [{"role": "assistant", "content": "".join(parts)}]


# -- the facade the hot path calls ----------------------------------------------------------


def start(op: str, payload: dict[str, Any], ctx: Context, *, stream: bool = False) -> Any:
    """Open the request's record (``NO_REQUEST`` when telemetry is off); kept on ``ctx``."""
    t = _get()
    if t is None:
        return NO_REQUEST
    req = Request(t, str(op), payload, ctx, stream)
    ctx.telemetry = req
    return req


def attempt(ctx: Context, backend: Backend) -> Any:
    """Open one try toward ``backend``; call ``.end(error)`` when it ends."""
    req = ctx.telemetry
    return req.begin(backend) if req is not None else NO_ATTEMPT


def traceparent(ctx: Context) -> str | None:
    """The ``traceparent`` to send toward the endpoint: the current try's span, or the
    caller's own header passed on unchanged when tracing is off."""
    req = ctx.telemetry
    if req is not None:
        att = req.attempt
        if att is not None and att.span is not None:
            return str(req.t.tracing.traceparent(att.span))
        if req.span is not None:
            return str(req.t.tracing.traceparent(req.span))
    return ctx.traceparent


def trace_id(ctx: Context) -> str | None:
    req = ctx.telemetry
    if req is not None and req.span is not None:
        return str(req.t.tracing.trace_id(req.span))
    tp = ctx.traceparent
    if tp and len(tp) >= 55 and tp[2] == "-":
        return tp[3:35]
    return None


def _attrs_of(ctx: Context | None) -> Attrs:
    req = ctx.telemetry if ctx is not None else None
    if req is None:
        return {"infer.caller": (ctx.caller if ctx else None) or "anonymous"}
    backend = req.attempt.attrs if req.attempt is not None else None
    attrs: Attrs = req.metric_attrs(backend, None, None)
    return attrs


def record_retry(ctx: Context, error: BaseException) -> None:
    t = _get()
    if t is not None:
        t.record(N.RETRIES, 1, {**_attrs_of(ctx), "error.type": _error_type(error)})


def record_failover(ctx: Context, from_backend: str, to_backend: str) -> None:
    t = _get()
    if t is not None:
        attrs = {**_attrs_of(ctx), "infer.backend": to_backend, "infer.failover.from": from_backend}
        t.record(N.FAILOVERS, 1, attrs)


CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def record_circuit(backend: str, state: str) -> None:
    """A circuit changed state (``closed`` | ``half_open`` | ``open``)."""
    t = _get()
    if t is not None:
        attrs = {"infer.backend": backend, "infer.circuit.state": state}
        t.record(N.CIRCUIT_CHANGES, 1, attrs)
        t.record(N.CIRCUIT_STATE, CIRCUIT_VALUES.get(state, 0), {"infer.backend": backend})


def record_throttle(ctx: Context | None, source: str = "limit") -> None:
    """A 429 sent to the caller by this service (``source`` limit) or a backend."""
    t = _get()
    if t is not None:
        t.record(N.THROTTLES, 1, {**_attrs_of(ctx), "infer.throttle.source": source})


def record_cache(ctx: Context | None, outcome: str) -> None:
    """A cache lookup: ``hit`` | ``miss`` | ``bypass`` (also set on the request's metrics)."""
    if ctx is not None and ctx.telemetry is not None:
        ctx.telemetry.cache = outcome
    t = _get()
    if t is not None:
        t.record(N.CACHE, 1, {**_attrs_of(ctx), "infer.cache": outcome})


def record_limit(ctx: Context | None, outcome: str) -> None:
    """A limit decision: ``admitted`` (not counted), ``rpm`` | ``tpm`` | ``quota`` |
    ``parallel`` (refused) or ``fail_open`` (the state store was down)."""
    if ctx is not None and ctx.telemetry is not None:
        ctx.telemetry.limit = outcome
    t = _get()
    if t is not None and outcome != "admitted":
        t.record(N.LIMIT_REFUSALS, 1, {**_attrs_of(ctx), "infer.limit": outcome})


def record_cost(ctx: Context | None, backend: str, cost: float) -> None:
    """What one answer cost (``infer.cost``, by caller, model and backend)."""
    t = _get()
    if t is not None:
        t.record(N.COST, cost, {**_attrs_of(ctx), "infer.backend": backend})


def record_backlog(backends: Iterable[str], waiting: Callable[[str], int]) -> None:
    """Requests of this instance waiting for a slot, per backend (``shared.capacity``)."""
    t = _get()
    if t is not None:
        for name in backends:
            t.record(N.BACKLOG, waiting(name), {"infer.backend": name})


def record_quota_headroom(backend: str, kind: str, remaining: float) -> None:
    """The provider's own ``x-ratelimit-remaining-{kind}`` after a call."""
    t = _get()
    if t is not None:
        t.record(N.QUOTA_HEADROOM, remaining, {"infer.backend": backend, "infer.quota.kind": kind})


def record_job_start(ctx: Context, age_s: float, op: str = "", model: str = "") -> None:
    t = _get()
    if t is not None:
        attrs = _clean(
            {
                "gen_ai.operation.name": OPERATIONS.get(op, op),
                "gen_ai.request.model": model,
                "infer.caller": ctx.caller or "anonymous",
            }
        )
        t.record(N.JOB_AGE, max(age_s, 0.0), attrs)


def record_queue_time(seconds: float, queue: str) -> None:
    t = _get()
    if t is not None:
        t.record(N.JOB_QUEUE_TIME, max(seconds, 0.0), {"infer.queue": queue})


def record_batch(batch: str, *, ok: int, failed: int, rate: float, limit: int) -> None:
    """A batch shard committed ``ok``/``failed`` lines at ``rate`` lines/s under ``limit``."""
    t = _get()
    if t is not None:
        base = {"infer.batch": batch}
        if ok:
            t.record(N.BATCH_LINES, ok, {**base, "infer.outcome": "ok"})
        if failed:
            t.record(N.BATCH_LINES, failed, {**base, "infer.outcome": "failed"})
        t.record(N.BATCH_RATE, rate, base)
        t.record(N.BATCH_LIMIT, limit, base)


def record_probe(
    backend: Backend,
    *,
    mode: str,
    model: str,
    available: bool,
    ttft_s: float | None,
    error_type: str | None = None,
) -> None:
    """One scheduled probe of ``backend`` (shared/probe.py)."""
    t = _get()
    if t is not None:
        attrs = _clean(
            {
                **t.backend_attrs(backend),
                "gen_ai.operation.name": "chat" if mode in ("stream", "chat") else mode,
                "gen_ai.request.model": model,
                "infer.probe.mode": mode,
                "error.type": error_type,
            }
        )
        t.record(N.PROBE_AVAILABILITY, 1 if available else 0, attrs)
        if ttft_s is not None:
            t.record(N.PROBE_TTFT, ttft_s, attrs)


async def flush(ctx: Context | None, *, default_s: float = 5.0) -> None:
    """Export what this invocation recorded before it returns, within its deadline."""
    t = _get()
    if t is None or not t.push:
        return
    from shared.blocking import run_blocking

    await run_blocking(flush_sync, ctx, default_s=default_s)


def flush_sync(ctx: Context | None, *, default_s: float = 5.0) -> None:
    """``flush`` for synchronous handlers (blocks for at most the time left)."""
    t = _get()
    if t is None or not t.push:
        return
    timeout = ctx.remaining() if ctx is not None else default_s
    if timeout <= 0:
        return
    try:
        t.flush(timeout)
    except Exception:  # telemetry never fails a request
        logging.getLogger("shared.telemetry").warning("telemetry flush failed", exc_info=True)


def flushing(body: AsyncIterator[bytes], ctx: Context) -> AsyncIterator[bytes]:
    """``body`` followed by a flush once it ends (streams: the invocation ends with them)."""
    t = _get()
    if t is None or not t.push:
        return body
    return _flush_after(body, ctx)


async def _flush_after(body: AsyncIterator[bytes], ctx: Context) -> AsyncIterator[bytes]:
    try:
        async for chunk in body:
            yield chunk
    finally:
        await flush(ctx)


def prometheus_text() -> tuple[bytes, str] | None:
    """The Prometheus exposition of every metric (``INFER_METRICS_PROMETHEUS`` on)."""
    t = _get()
    if t is None or t.otel is None or t.otel.prometheus is None:
        return None
    text: tuple[bytes, str] = t.otel.prometheus_text()
    return text


def log_request(
    logger: logging.Logger,
    level: int,
    ctx: Context,
    payload: dict[str, Any] | None = None,
    **fields: Any,
) -> None:
    """One JSON line per request: ids, caller, model, backend, outcome (no content unless
    ``INFER_CAPTURE_CONTENT``, then redacted)."""
    if not logger.isEnabledFor(level):
        return
    record: Attrs = {
        "request_id": ctx.request_id,
        "trace_id": trace_id(ctx),
        "caller": ctx.caller or "anonymous",
        **fields,
    }
    redactor = capture()
    if redactor is not None and payload is not None:
        record["prompt"] = _redacted_json(_content_of(payload), redactor, 2000)
    logger.log(level, json.dumps(_clean(record), ensure_ascii=False, default=str))
