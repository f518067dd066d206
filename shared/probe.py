"""Scheduled probe: a tiny request to every backend; availability, TTFT, circuits, warm-up.

The ``probe`` function (Azure timer trigger, AWS EventBridge Scheduler) calls ``run_probe``.
For every backend of ``INFER_BACKENDS``, at once and each within ``INFER_PROBE_TIMEOUT_S``:

- ``probe: "stream"`` (default, except SageMaker): a streamed chat with ``max_tokens: 1``;
  TTFT is the time to the first content chunk.
- ``probe: "chat"`` (SageMaker's default: serverless and async endpoints do not stream): the
  same chat, not streamed; TTFT is the time to the whole one-token answer.
- ``probe: "ready"``: the kind's readiness call only (no generation, so an endpoint that
  scales to zero is left to do so); no TTFT.
- ``probe: "off"``: not probed.

A chat probe is also the warm-up: it keeps endpoints that scale to zero (SageMaker
serverless or async, Azure ML with few instances) from going cold between live requests.

Circuits (``shared.router``): a probe that succeeds closes the backend's circuit at once (a
recovered backend takes traffic again without waiting for its hold to pass); a retryable
failure (timeout, connection, 429, 5xx) opens it for ``INFER_PROBE_OPEN_S`` (or the
endpoint's Retry-After, if longer), so live requests go to the other backends without first
paying a timeout. A non-retryable answer (400, 401, 404) counts as unavailable but leaves the
circuit alone: the endpoint is up, the probe's request or credentials are wrong.

Circuits live in the process: on Azure the timer runs in the same worker process as the HTTP
functions, so they share them; on Lambda each function has its own processes, and there the
probe's value is the measurements and the warm-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from shared import telemetry
from shared.backends.base import Backend
from shared.context import Context
from shared.errors import BackendError, DeadlineExceeded, InferenceError
from shared.lines import LineSplitter, data_events
from shared.router import Router, Slot
from shared.schemas import Operation
from shared.settings import DEFAULT_MODEL, CachedSettings, EnvSettings

log = logging.getLogger("shared.probe")

ProbeMode = Literal["stream", "chat", "ready", "off"]
#: Bytes of a probe stream read at most (a one-token answer is a few hundred).
_MAX_STREAM_BYTES = 65536


class ProbeSettings(EnvSettings):
    """``INFER_PROBE_*`` (the schedule itself is read by the platform, not here)."""

    env_prefix: ClassVar[str] = "INFER_PROBE_"

    timeout_s: float = Field(default=10.0, gt=0)
    open_s: float = Field(default=30.0, ge=0)
    prompt: str = Field(default="ping", min_length=1, max_length=200)


_settings = CachedSettings(ProbeSettings)
get_probe_settings = _settings.get


@dataclass
class BackendReport:
    backend: str
    kind: str
    mode: str
    available: bool
    ttft_s: float | None
    duration_s: float
    circuit: str
    error_type: str | None = None
    error: str | None = None


def probe_mode(backend: Backend) -> ProbeMode:
    configured: ProbeMode | None = backend.config.probe
    if configured is not None:
        return configured
    return backend.config.default_probe


def probe_model(backend: Backend) -> str:
    """The model name the probe asks for: the backend's first named model."""
    named = [m for m in backend.config.models if m != "*"]
    return named[0] if named else DEFAULT_MODEL


def probe_payload(backend: Backend, prompt: str, *, stream: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": probe_model(backend),
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 1,
        "temperature": 0,
    }
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload


def _has_content(line: bytes) -> bool:
    for data in data_events(line):
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or choice.get("text") or choice.get("finish_reason"):
                return True
    return False


async def _stream_ttft(backend: Backend, payload: dict[str, Any], ctx: Context) -> float:
    """Seconds to the first content chunk (or the first event, if none carries content)."""
    started = time.monotonic()
    stream = await backend.open_stream(Operation.CHAT, payload, ctx)
    first_event: float | None = None
    ttft: float | None = None
    lines = LineSplitter()
    read = 0
    try:
        async for chunk in stream:
            read += len(chunk)
            for line in lines.lines(chunk):
                now = time.monotonic() - started
                if first_event is None and line.strip():
                    first_event = now
                if ttft is None and _has_content(line):
                    ttft = now
            if read > _MAX_STREAM_BYTES:
                break
    finally:
        await stream.aclose()
    if ttft is None:
        ttft = first_event if first_event is not None else time.monotonic() - started
    return ttft


async def _probe_once(backend: Backend, mode: ProbeMode, prompt: str, ctx: Context) -> float | None:
    if mode == "stream":
        return await _stream_ttft(backend, probe_payload(backend, prompt, stream=True), ctx)
    if mode == "chat":
        started = time.monotonic()
        await backend.invoke(Operation.CHAT, probe_payload(backend, prompt, stream=False), ctx)
        return time.monotonic() - started
    await backend.check_ready(ctx)
    return None


def _update_circuit(slot: Slot, err: InferenceError | None, open_s: float, now: float) -> None:
    if err is None:
        slot.circuit.record_success()
    elif err.retryable or isinstance(err, DeadlineExceeded):
        hold = max(open_s, min(err.retry_after or 0.0, 120.0))
        slot.circuit.trip(now, hold)


async def probe_backend(
    slot: Slot, settings: ProbeSettings, parent: Context, *, clock: Any = time.monotonic
) -> BackendReport | None:
    backend = slot.backend
    mode = probe_mode(backend)
    if mode == "off":
        return None
    ctx = Context.with_timeout(
        max(0.0, min(settings.timeout_s, parent.remaining())),
        request_id=f"{parent.request_id}-{backend.name}",
    )
    lease = await slot.gate.take(ctx)  # the probe is load too: live requests see it
    if lease is None:
        return None  # at capacity: busy serving, and no room for a probe
    started = time.monotonic()
    err: InferenceError | None = None
    ttft: float | None = None
    try:
        ttft = await asyncio.wait_for(
            _probe_once(backend, mode, settings.prompt, ctx), timeout=max(ctx.remaining(), 0.0)
        )
    except InferenceError as exc:
        err = exc
    except TimeoutError:
        err = DeadlineExceeded(f"no answer within {settings.timeout_s:g}s")
    except Exception as exc:  # a probe never raises: it reports
        err = BackendError(f"probe failed: {type(exc).__name__}")
    finally:
        await lease.release()
    now = clock()
    _update_circuit(slot, err, settings.open_s, now)
    telemetry.record_probe(
        backend,
        mode=mode,
        model=probe_model(backend),
        available=err is None,
        ttft_s=ttft,
        error_type=None if err is None else type(err).__name__,
    )
    return BackendReport(
        backend=backend.name,
        kind=backend.config.kind,
        mode=mode,
        available=err is None,
        ttft_s=None if ttft is None else round(ttft, 6),
        duration_s=round(time.monotonic() - started, 6),
        circuit=slot.circuit.state(now),
        error_type=None if err is None else type(err).__name__,
        error=None if err is None else err.message[:300],
    )


async def run_probe(
    router: Router,
    ctx: Context,
    settings: ProbeSettings | None = None,
    *,
    past_due: bool = False,
) -> dict[str, Any]:
    """Probe every backend at once; log one JSON line per backend; return the report."""
    settings = settings or get_probe_settings()
    reports = await asyncio.gather(
        *(probe_backend(slot, settings, ctx, clock=router.clock) for slot in router.slots)
    )
    backends = [r for r in reports if r is not None]
    for report in backends:
        _record(report)
    result = {
        "past_due": past_due,
        "available": sum(1 for r in backends if r.available),
        "backends": [asdict(r) for r in backends],
    }
    global _last
    _last = result
    return result


_last: dict[str, Any] | None = None


def last_report() -> dict[str, Any] | None:
    """The report of this process's latest probe run (None before the first)."""
    return _last


def _record(report: BackendReport) -> None:
    level = logging.INFO if report.available else logging.WARNING
    if log.isEnabledFor(level):
        log.log(level, json.dumps({"event": "probe", **asdict(report)}, separators=(",", ":")))


async def run_scheduled_probe(*, past_due: bool = False) -> dict[str, Any]:
    """What the platform adapters call: the process's service, a deadline from the settings."""
    from shared.service import get_service

    settings = get_probe_settings()
    ctx = Context.with_timeout(settings.timeout_s + 2.0)
    try:
        return await run_probe(get_service().router, ctx, settings, past_due=past_due)
    finally:
        await telemetry.flush(ctx)  # a frozen process exports nothing
